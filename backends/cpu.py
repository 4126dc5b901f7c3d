"""The ``cpu`` target: run the lowered graph on crisp's fast CPU kernels.

Lowering turns every pruned Conv2d into ``unfold -> (kh, kw, cin) reorder -> crisp::hybrid_sparse_gemm
-> reshape`` and every pruned Linear into the gemm op; each node it creates carries
``meta["crisp_lowered_from"]`` and the gemm node carries the layer's LayerInfo. This backend works
on a copy of that graph (the input graph module is never changed) and, per pruned layer:

- packs the compact weight once for the kernel that runs it, and the packed arrays replace the
  layer's compact buffers in the copy: a conv whose N:M groups are whole runs of input channels
  (m divides Cin) gets a :class:`ChannelPackedWeight` for ``crisp::hybrid_sparse_conv2d_nhwc``
  (vectorized over output channels, channels-last in and out; AVX-512), any other conv a
  :class:`PackedHybridWeight` for ``crisp::hybrid_sparse_conv2d_fast`` (vectorized over output
  positions, writing channels-last too), a Linear a :class:`PackedHybridWeight` for
  ``crisp::hybrid_sparse_linear_fast``;
- replaces the layer's whole subgraph (unfold, reorder, gemm, reshape) with that one call, bias
  (with folded BatchNorm) fused. Activations flow channels-last between layers, which the other
  torch ops of the graph (pooling, adds) keep and handle fast;
- fuses a following ReLU / ReLU6, and a same-shape residual ``add`` (+ ReLU) of ResNet and
  MobileNetV2 blocks;
- folds BatchNorms that follow dense (unpruned, e.g. depthwise) convs into them and gives those
  convs channels-last weights;
- runs the dense convs left in the graph on the same kernels (every weight kept) and dense
  depthwise convs (MobileNetV2) on a depthwise kernel, a following ReLU/ReLU6 fused; MaxPool2d
  (dilation 1, floor mode) and global average pools with crisp's channels-last kernels, so that
  no other thread pool wakes between two layers.

If the fast kernels cannot be built or fail their self-check, or the model is not float32, the
backend returns the lowered graph unchanged (the reference kernel) after one warning.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.ir.layer_info import META_KEY, LayerInfo
from crisp.sparsity.pattern import Pattern
from crisp.runtime import fast_kernel
from crisp.runtime.packed_weight import ChannelPackedWeight, PackedHybridWeight

from crisp.backends.registry import BackendInput, BackendOutput, register_backend

LOWERED_KEY = "crisp_lowered_from"
GEMM_OP = torch.ops.crisp.hybrid_sparse_gemm.default


class PackedLayer(nn.Module):
    """Holds one pruned layer's packed weight and bias as buffers (they follow ``.to`` and state_dict)."""

    def __init__(self, packed: PackedHybridWeight | ChannelPackedWeight, bias: torch.Tensor | None):
        super().__init__()
        for name, tensor in packed.tensors().items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.layout = "channel" if isinstance(packed, ChannelPackedWeight) else "rows"
        self.weight_shape = packed.weight_shape

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name != "bias")

    def extra_repr(self) -> str:
        return f"layout={self.layout}, weight_shape={self.weight_shape}, bytes={self.nbytes}"


def _activation(node: fx.Node, gm: fx.GraphModule) -> tuple[str, float, float] | None:
    """(name, clamp_min, clamp_max) if ``node`` is a ReLU or ReLU6 the fast ops can fuse."""
    inf = float("inf")
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.ReLU6):
            return ("relu6", 0.0, 6.0)
        if isinstance(module, nn.ReLU):
            return ("relu", 0.0, inf)
        return None
    if node.op == "call_function" and node.target in (torch.relu, torch.relu_, F.relu, torch.ops.aten.relu.default):
        return ("relu", 0.0, inf)
    if node.op == "call_function" and node.target is F.relu6:
        return ("relu6", 0.0, 6.0)
    if node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1:
        return ("relu", 0.0, inf)
    return None


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


def _sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


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


def _pack(compact, in_channels: int, conv: bool) -> PackedHybridWeight | ChannelPackedWeight:
    """The layout of the kernel that runs this weight: channel-vector where it fits, else rows."""
    if conv and fast_kernel.channel_kernel_available() and ChannelPackedWeight.supports(compact, in_channels):
        return ChannelPackedWeight.from_compact(compact, in_channels)
    return PackedHybridWeight.from_compact(compact)


def _conv_call(graph: fx.Graph, packed, x, attrs, bias, residual, geometry) -> fx.Node:
    """The fused conv op for ``packed`` (its tensors as get_attr nodes ``attrs``); channels-last out."""
    if isinstance(packed, ChannelPackedWeight):
        args = (x, *attrs, packed.rows, packed.n, packed.m, bias, residual, *geometry)
        return graph.call_function(torch.ops.crisp.hybrid_sparse_conv2d_nhwc.default, args)
    args = (x, *attrs, packed.in_features, bias, residual, *geometry, True)
    return graph.call_function(torch.ops.crisp.hybrid_sparse_conv2d_fast.default, args)


def _dense_pattern(k: int) -> Pattern:
    """Every weight kept: how a dense conv runs on the sparse kernels. Blocks of 32 (two row
    vectors share each input load) unless that would pad K."""
    return Pattern(4, 4, 32 if k % 32 == 0 else 16)


def _module_calls_on_4d_float(gm: fx.GraphModule, accept) -> list[tuple[fx.Node, nn.Module]]:
    """(node, module) for every call of a module that ``accept`` takes, on one 4-d float32 tensor."""
    calls = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        module = gm.get_submodule(node.target)
        meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
        if accept(module) and meta is not None and len(meta.shape) == 4 and meta.dtype == torch.float32:
            calls.append((node, module))
    return calls


def _replace_module_call(gm: fx.GraphModule, node: fx.Node, fuse_activations: bool, make_call) -> str:
    """Replace the module call ``node`` (and a ReLU/ReLU6 right after it) with the node
    ``make_call(clamp_min, clamp_max)`` builds; returns what was replaced, e.g. "conv1+relu"."""
    inf = float("inf")
    end, clamp = node, (-inf, inf)
    user = _sole_user(node) if fuse_activations else None
    act = _activation(user, gm) if user is not None else None
    if act is not None:
        end, clamp = user, act[1:]
    with gm.graph.inserting_before(node):
        fused = make_call(*clamp)
    fused.meta.update(end.meta)
    end.replace_all_uses_with(fused)
    if end is not node:
        gm.graph.erase_node(end)
    gm.graph.erase_node(node)
    return node.target + ("+" + act[0] if act is not None else "")


def _set_submodule(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def _is_plain_conv(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and module.weight.dtype == torch.float32)


def _lower_dense_convs(gm: fx.GraphModule, fuse_activations: bool) -> list[str]:
    """Run the dense (unpruned, groups=1) convs left in the graph, e.g. a stem conv whose K is
    smaller than one block, on crisp's kernels as fully kept weights, a following ReLU/ReLU6
    fused: no torch op (and no second thread pool) between two crisp layers."""
    lowered = []
    for node, conv in _module_calls_on_4d_float(gm, lambda m: _is_plain_conv(m) and m.groups == 1):
        weight = conv.weight.detach().float()
        compact = HybridSparseTensor.from_dense(weight, torch.ones_like(weight, dtype=torch.bool),
                                                _dense_pattern(weight[0].numel()))
        packed = _pack(compact, conv.in_channels, True)
        _set_submodule(gm, node.target, PackedLayer(packed, conv.bias))

        def call(lo, hi, node=node, conv=conv, packed=packed):
            attrs = [gm.graph.get_attr(f"{node.target}.{name}") for name in packed.tensors()]
            bias = gm.graph.get_attr(f"{node.target}.bias") if conv.bias is not None else None
            geometry = (list(conv.kernel_size), list(conv.stride), list(conv.padding), list(conv.dilation), lo, hi)
            return _conv_call(gm.graph, packed, node.args[0], attrs, bias, None, geometry)

        lowered.append(_replace_module_call(gm, node, fuse_activations, call))
    return lowered


def _fuse_layer(gm: fx.GraphModule, gemm: fx.Node, info: LayerInfo, fuse_activations: bool) -> str:
    """Replace one layer's subgraph with a fused fast op; return a description of what was fused."""
    graph = gm.graph
    x, out, group = _layer_subgraph(graph, info, gemm)
    holder_path = gemm.args[1].target.rsplit(".", 1)[0]  # "<layer>.values" -> "<layer>"
    holder = gm.get_submodule(holder_path)
    packed = _pack(holder.compact(), info.weight_shape[1], info.kind == "conv")
    _set_submodule(gm, holder_path, PackedLayer(packed, holder.bias))

    # what follows the layer: ReLU, or add(+ReLU) with a same-shape tensor
    inf = float("inf")
    end, residual, clamp, parts = out, None, (-inf, inf), ["bias"] if holder.bias is not None else []
    if fuse_activations:
        user = _sole_user(out)
        if user is not None and info.kind == "conv" and _is_add(user, out):
            other = user.args[1] if user.args[0] is out else user.args[0]
            if isinstance(other, fx.Node) and other is not out and _shape(other) is not None and _shape(other) == _shape(out):
                end, residual = user, other
                parts.append("residual")
                user = _sole_user(user)
        act = _activation(user, gm) if user is not None else None
        if act is not None:
            end, clamp = user, act[1:]
            parts.append(act[0])

    with graph.inserting_before(end.next):
        attrs = [graph.get_attr(f"{holder_path}.{name}") for name in packed.tensors()]
        bias = graph.get_attr(f"{holder_path}.bias") if holder.bias is not None else None
        if info.kind == "conv":
            conv = info.conv
            geometry = (list(conv.kernel), list(conv.strides), list(conv.padding), list(conv.dilations), *clamp)
            fused = _conv_call(graph, packed, x, attrs, bias, residual, geometry)
        else:
            fused = graph.call_function(torch.ops.crisp.hybrid_sparse_linear_fast.default,
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
        node = _sole_user(node)
        doomed.add(node)
    for node in sorted(doomed, key=order.__getitem__, reverse=True):
        graph.erase_node(node)
    kernel = {ChannelPackedWeight: "channel", PackedHybridWeight: "rows"}[type(packed)]
    return "+".join(["conv" if info.kind == "conv" else "linear", *parts]) + f" [{kernel}]"


def _fold_dense_batchnorms(gm: fx.GraphModule) -> list[str]:
    """Fold every BatchNorm2d that directly follows a dense (unpruned) Conv2d into that conv, and
    give the remaining dense convs channels-last weights (the activations flow channels-last)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.BatchNorm2d):
            continue
        bn = gm.get_submodule(node.target)
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv = gm.get_submodule(src.target)
        if not isinstance(conv, nn.Conv2d) or bn.training or not bn.track_running_stats:
            continue
        _set_submodule(gm, src.target, fuse_conv_bn_eval(conv.eval(), bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded.append(node.target)
    for module in gm.modules():
        if isinstance(module, nn.Conv2d):
            module.to(memory_format=torch.channels_last)
    return folded


class DepthwiseLayer(nn.Module):
    """A dense depthwise conv for ``crisp::depthwise_conv2d_nhwc``: weight as ``[kh*kw, C]``, bias."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        c, _, kh, kw = conv.weight.shape
        self.register_buffer("weight", conv.weight.detach().reshape(c, kh * kw).t().contiguous().float())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        self.geometry = ([kh, kw], list(conv.stride), list(conv.padding), list(conv.dilation))


def _lower_depthwise(gm: fx.GraphModule, fuse_activations: bool) -> list[str]:
    """Run dense depthwise convs (and a ReLU/ReLU6 after them) with crisp's channels-last kernel."""
    lowered = []
    depthwise = lambda m: _is_plain_conv(m) and m.groups == m.in_channels == m.out_channels > 1  # noqa: E731
    for node, conv in _module_calls_on_4d_float(gm, depthwise):
        layer = DepthwiseLayer(conv)
        _set_submodule(gm, node.target, layer)

        def call(lo, hi, node=node, layer=layer):
            weight = gm.graph.get_attr(f"{node.target}.weight")
            bias = gm.graph.get_attr(f"{node.target}.bias") if layer.bias is not None else None
            return gm.graph.call_function(torch.ops.crisp.depthwise_conv2d_nhwc.default,
                                          (node.args[0], weight, bias, *layer.geometry, lo, hi))

        lowered.append(_replace_module_call(gm, node, fuse_activations, call))
    return lowered


def _pool_call(module: nn.Module) -> tuple[Any, tuple] | None:
    """(op, extra args) of the crisp pool that computes ``module`` exactly, or None."""
    if isinstance(module, nn.MaxPool2d):
        kernel, padding = fast_kernel.size_pair(module.kernel_size), fast_kernel.size_pair(module.padding)
        if (module.ceil_mode or module.return_indices or fast_kernel.size_pair(module.dilation) != [1, 1]
                or any(2 * p > k for p, k in zip(padding, kernel))):
            return None
        return torch.ops.crisp.max_pool2d_nhwc.default, (kernel, fast_kernel.size_pair(module.stride or module.kernel_size), padding)
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1), [1, 1]):
        return torch.ops.crisp.global_avg_pool_nhwc.default, ()
    return None


def _lower_pools(gm: fx.GraphModule) -> list[str]:
    """Run MaxPool2d and global AdaptiveAvgPool2d modules on 4-d float32 activations with crisp's
    channels-last pools, on the same threads as the convs."""
    lowered = []
    for node, module in _module_calls_on_4d_float(gm, lambda m: _pool_call(m) is not None):
        op, extra = _pool_call(module)
        lowered.append(_replace_module_call(
            gm, node, False, lambda lo, hi, node=node, op=op, extra=extra: gm.graph.call_function(op, (node.args[0], *extra))))
    return lowered


def fuse_for_cpu(graph_module: fx.GraphModule, *, fuse_activations: bool = True
                 ) -> tuple[fx.GraphModule, dict[str, str], list[str], list[str], list[str]]:
    """A copy of the lowered ``graph_module`` with every pruned layer on the fast kernels, the
    BatchNorms after dense convs folded and the depthwise convs and pools on crisp's kernels:
    (module, what each pruned layer became, folded BNs, dense convs lowered, pools lowered)."""
    gm = copy.deepcopy(graph_module)
    fused: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is GEMM_OP and META_KEY in node.meta:
            info = node.meta[META_KEY]
            fused[info.name] = _fuse_layer(gm, node, info, fuse_activations)
    folded = _fold_dense_batchnorms(gm)
    dense = _lower_depthwise(gm, fuse_activations) + _lower_dense_convs(gm, fuse_activations)
    pools = _lower_pools(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, fused, folded, dense, pools


def _float32_model(graph_module: fx.GraphModule) -> bool:
    return all(t.dtype == torch.float32 for t in graph_module.parameters()) and all(
        t.dtype == torch.float32 for name, t in graph_module.named_buffers() if name.endswith(".values")
    )


@register_backend("cpu")
def cpu_backend(lowered: BackendInput) -> BackendOutput:
    if not _float32_model(lowered.graph_module):
        return BackendOutput(module=lowered.graph_module, artifacts={"cpu_kernels": "reference", "reason": "model is not float32"})
    if not fast_kernel.available():  # warns once per process
        return BackendOutput(
            module=lowered.graph_module,
            artifacts={"cpu_kernels": "reference", "reason": fast_kernel.unavailable_reason()},
        )
    gm, fused, folded, dense, pools = fuse_for_cpu(lowered.graph_module, fuse_activations=lowered.options.get("fuse_activations", True))
    packed = sum(m.nbytes for m in gm.modules() if isinstance(m, PackedLayer))
    return BackendOutput(module=gm, artifacts={"cpu_kernels": "fast", "fused": fused, "folded_batchnorms": folded,
                                               "dense_convs": dense, "lowered_pools": pools,
                                               "packed_weight_bytes": packed})
