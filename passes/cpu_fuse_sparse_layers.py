"""FuseSparseLayersForCpu: replace each pruned layer's lowered subgraph (unfold, reorder,
``crisp::hybrid_sparse_gemm``, reshape) with one call of crisp's fast CPU kernels.

The layer's compact weight is packed once for the kernel that runs it (a :class:`PackedLayer`
takes the compact holder's place): a conv whose N:M groups are whole runs of input channels gets
the channel-vector kernel ``crisp::hybrid_sparse_conv2d_nhwc``, any other conv
``crisp::hybrid_sparse_conv2d_fast``; a Linear the channel kernel on its input read as one image
(:func:`crisp.runtime.channel_linear.channel_linear_call`) or ``crisp::hybrid_sparse_linear_fast``; a layer whose
measured choice is ``dense`` runs torch's own conv / linear on its whole (BN-folded) weight
(:mod:`crisp.runtime.dense_path`). Bias, a
following ReLU / ReLU6 and a same-shape residual ``add`` (+ ReLU) are fused; conv outputs are
channels-last. What each layer became is recorded under ``meta[CPU_KEY]["fused"]``.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from crisp.ir.layer_info import META_KEY, LayerInfo
from crisp.ir.meta import LOWERED_KEY
from crisp.runtime.ops import HYBRID_SPARSE_GEMM
from crisp.runtime import dense_path, fast_kernel
from crisp.runtime.channel_linear import channel_linear_call
from crisp.runtime.packed_weight import ChannelPackedWeight, DenseWeight

from crisp.passes.base import CrispPass
from crisp.passes.cpu_common import (
    INF, PackedLayer, activation, arrives_channels_last, conv_call, record, require_fast_kernels, sole_user, tidy,
)
from crisp.passes.cpu_kernel_choice import Choice, Context, Tuner

INPLACE_ADDS = (("call_function", operator.iadd), ("call_method", "add_"))


def _is_add(node: fx.Node, out: fx.Node) -> bool:
    """A plain two-tensor add of ``out`` and something else; an in-place add only when it writes
    into ``out`` (which then disappears), never into the other operand."""
    plain = (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )
    if not plain or len(node.args) != 2 or node.kwargs:
        return False
    if (node.op, node.target) in INPLACE_ADDS:
        return node.args[0] is out
    return True


def _shape(node: Any) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _layer_subgraph(graph: fx.Graph, info: LayerInfo, gemm: fx.Node) -> tuple[fx.Node, fx.Node, list[fx.Node]]:
    """(input node, output node, all nodes) of the lowered subgraph of layer ``info``."""
    group = [n for n in graph.nodes if n.meta.get(LOWERED_KEY) == info.name]
    members = set(group)
    if info.kind == "conv":
        unfold = [n for n in group if n.op == "call_function" and n.target is F.unfold]
        if len(unfold) != 1:
            raise RuntimeError(f"layer {info.name!r}: expected one unfold node in its lowered subgraph")
        x = unfold[0].args[0]
    else:
        x = gemm.args[0]
    outputs = [n for n in group if any(u not in members for u in n.users)]
    if len(outputs) != 1:
        raise RuntimeError(f"layer {info.name!r}: expected one output node in its lowered subgraph, got {len(outputs)}")
    return x, outputs[0], group


def _epilogue(gm: fx.GraphModule, out: fx.Node, info: LayerInfo, fuse_activations: bool):
    """What follows the layer and folds into its call: (last node folded, residual, clamp, parts),
    a same-shape residual add (convs) and then a ReLU / ReLU6."""
    end, residual, clamp, parts = out, None, (-INF, INF), []
    if not fuse_activations:
        return end, residual, clamp, parts
    user = sole_user(out)
    if user is not None and info.kind == "conv" and _is_add(user, out):
        other = user.args[1] if user.args[0] is out else user.args[0]
        if isinstance(other, fx.Node) and other is not out and _shape(other) is not None and _shape(other) == _shape(out):
            end, residual = user, other
            parts.append("residual")
            user = sole_user(user)
    act = activation(user, gm) if user is not None else None
    if act is not None:
        end, clamp = user, act[1:]
        parts.append(act[0])
    return end, residual, clamp, parts


def _fuse_layer(gm: fx.GraphModule, gemm: fx.Node, info: LayerInfo, fuse_activations: bool, tuner: Tuner
                ) -> tuple[str, Choice]:
    """Replace one layer's subgraph with a fused fast op on the kernel ``tuner`` chooses; return a
    description of what was fused and the choice."""
    graph = gm.graph
    x, out, group = _layer_subgraph(graph, info, gemm)
    holder_path = gemm.args[1].target.rsplit(".", 1)[0]  # "<layer>.values" -> "<layer>"
    holder = gm.get_submodule(holder_path)
    conv = info.conv
    shape_geometry = (list(conv.kernel), list(conv.strides), list(conv.padding), list(conv.dilations)) if conv else ()
    end, residual, clamp, parts = _epilogue(gm, out, info, fuse_activations)
    context = Context(residual=residual is not None, clamp=clamp,
                      channels_last_input=info.kind != "conv" or arrives_channels_last(x))
    choice = tuner.choose(holder.compact(), info.weight_shape[1], info.kind, _shape(x), shape_geometry, holder.bias,
                          context)
    packed = choice.packed
    gm.set_submodule(holder_path, PackedLayer(packed, holder.bias))

    with graph.inserting_before(end.next):
        attrs = [graph.get_attr(f"{holder_path}.{name}") for name in packed.tensors()]
        bias = graph.get_attr(f"{holder_path}.bias") if holder.bias is not None else None
        if info.kind == "conv":
            geometry = (*shape_geometry, *clamp)
            fused = conv_call(graph, packed, x, attrs, bias, residual, geometry)
        elif isinstance(packed, DenseWeight):
            fused = graph.call_function(dense_path.linear, (x, *attrs, bias, *clamp))
        elif isinstance(packed, ChannelPackedWeight):
            args = (x, *attrs, packed.rows, packed.n, packed.m, bias, *clamp, fast_kernel.cpu_capability())
            fused = graph.call_function(channel_linear_call, args)
        else:
            fused = graph.call_function(fast_kernel.op("hybrid_sparse_linear_fast"),
                                        (x, *attrs, packed.in_features, bias, *clamp))
    fused.meta[LOWERED_KEY] = info.name
    fused.meta[META_KEY] = info
    if "tensor_meta" in end.meta:
        fused.meta["tensor_meta"] = end.meta["tensor_meta"]
    end.replace_all_uses_with(fused)
    order = {n: i for i, n in enumerate(graph.nodes)}
    doomed = set(group)
    node = out
    while node is not end:  # the add / ReLU nodes folded into the fused op
        node = sole_user(node)
        doomed.add(node)
    for node in sorted(doomed, key=order.__getitem__, reverse=True):
        graph.erase_node(node)
    bias_part = ["bias"] if holder.bias is not None else []
    return "+".join(["conv" if info.kind == "conv" else "linear", *bias_part, *parts]) + f" [{choice.kernel}]", choice


class FuseSparseLayersForCpu(CrispPass):
    """Every pruned layer on one fused fast-kernel call (``fuse_activations``: also ReLU and residual adds)."""

    needs = ("lowered",)
    adds = ("cpu_sparse_layers",)

    def __init__(self, fuse_activations: bool = True):
        self.fuse_activations = fuse_activations

    def call(self, graph_module: fx.GraphModule) -> bool:
        require_fast_kernels(self.name)
        fused: dict[str, str] = {}
        choices: dict[str, dict] = {}
        tuner, isa = Tuner(), fast_kernel.cpu_capability()
        for node in list(graph_module.graph.nodes):
            if node.op == "call_function" and node.target is HYBRID_SPARSE_GEMM and META_KEY in node.meta:
                info = node.meta[META_KEY]
                fused[info.name], choice = _fuse_layer(graph_module, node, info, self.fuse_activations, tuner)
                choices[info.name] = {"kernel": choice.kernel, "isa": isa, "reason": choice.reason,
                                      "times_ms": choice.times_ms}
        record(graph_module, "fused", fused)
        record(graph_module, "kernel_choices", choices)
        tidy(graph_module)
        return bool(fused)
