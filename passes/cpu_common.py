"""What the cpu passes share: the module holding a packed weight, the kernel choice for a weight,
the fused conv call, fusable activations, module-call replacement and the record of what each
pass did (``graph_module.meta[CPU_KEY]``, which the ``cpu`` target returns as artifacts)."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from crisp.errors import CrispError
from crisp.ir.meta import CPU_KEY
from crisp.runtime import dense_path, fast_kernel
from crisp.runtime.packed_weight import ChannelPackedWeight, DenseWeight, GemmPackedWeight, PackedHybridWeight

INF = float("inf")


class PackedLayer(nn.Module):
    """Holds one pruned layer's packed weight and bias as buffers (they follow ``.to`` and state_dict)."""

    def __init__(self, packed: PackedHybridWeight | ChannelPackedWeight | DenseWeight, bias: torch.Tensor | None):
        super().__init__()
        for name, tensor in packed.tensors().items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.layout = layout(packed)
        self.weight_shape = packed.weight_shape

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name != "bias")

    def extra_repr(self) -> str:
        return f"layout={self.layout}, weight_shape={self.weight_shape}, bytes={self.nbytes}"


def require_fast_kernels(pass_name: str) -> None:
    """Refuse to insert the fast ops where they cannot run (the ``cpu`` target checks this first)."""
    if not fast_kernel.available():
        raise CrispError(f"pass {pass_name} inserts crisp's fast CPU kernels, which are unavailable here "
                         f"({fast_kernel.unavailable_reason()}); compile with target='reference' instead")


def record(graph_module: fx.GraphModule, key: str, done: list | dict) -> None:
    """Add what a pass did to ``graph_module.meta[CPU_KEY][key]`` (a list or a dict)."""
    store = graph_module.meta.setdefault(CPU_KEY, {})
    if isinstance(done, dict):
        store.setdefault(key, {}).update(done)
    else:
        store.setdefault(key, []).extend(done)


def tidy(graph_module: fx.GraphModule) -> None:
    """Drop the nodes and submodules a rewrite left unused."""
    graph_module.graph.eliminate_dead_code()
    graph_module.delete_all_unused_submodules()


def activation(node: fx.Node, gm: fx.GraphModule) -> tuple[str, float, float] | None:
    """(name, clamp_min, clamp_max) if ``node`` is a ReLU or ReLU6 the fast ops can fuse."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.ReLU6):
            return ("relu6", 0.0, 6.0)
        if isinstance(module, nn.ReLU):
            return ("relu", 0.0, INF)
        return None
    if node.op == "call_function" and node.target in (torch.relu, torch.relu_, F.relu, torch.ops.aten.relu.default):
        return ("relu", 0.0, INF)
    if node.op == "call_function" and node.target is F.relu6:
        return ("relu6", 0.0, 6.0)
    if node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1:
        return ("relu", 0.0, INF)
    return None


def following_activation(gm: fx.GraphModule, node: fx.Node, fuse: bool = True) -> tuple[str, float, float] | None:
    """The ReLU / ReLU6 (name, clamp_min, clamp_max) that is ``node``'s only user, which its fused call
    takes in (None if there is none, or ``fuse`` is off)."""
    user = sole_user(node) if fuse else None
    return activation(user, gm) if user is not None else None


def arrives_channels_last(x: fx.Node) -> bool:
    """Whether a conv's input ``x`` reaches it channels-last in the cpu graph: every activation there
    flows channels-last (crisp's ops write it) except the model's own inputs, taken as passed (NCHW)."""
    return x.op != "placeholder"


def sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def layout(packed) -> str:
    """The kernel a packed weight runs on: ``channel``, ``rows``, ``gemm`` (crisp's dense conv)
    or ``dense`` (torch's own conv / linear)."""
    if isinstance(packed, DenseWeight):
        return "dense"
    if isinstance(packed, GemmPackedWeight):
        return "gemm"
    return "channel" if isinstance(packed, ChannelPackedWeight) else "rows"


def pack(compact, in_channels: int) -> PackedHybridWeight | ChannelPackedWeight:
    """The layout of the kernel that runs this weight (a conv's, or a Linear's with ``in_channels``
    its input features): channel-vector where it fits, else rows."""
    if ChannelPackedWeight.supports(compact, in_channels, fast_kernel.channel_max_m()):
        return ChannelPackedWeight.from_compact(compact, in_channels)
    return PackedHybridWeight.from_compact(compact)


def conv_call(graph: fx.Graph, packed, x, attrs, bias, residual, geometry) -> fx.Node:
    """The fused conv op for ``packed`` (its tensors as get_attr nodes ``attrs``); channels-last out.
    ``geometry``: (kernel, stride, padding, dilation, clamp_min, clamp_max)."""
    if isinstance(packed, DenseWeight):
        _, stride, padding, dilation, lo, hi = geometry
        return graph.call_function(dense_path.conv2d, (x, *attrs, bias, residual, stride, padding, dilation, lo, hi))
    if isinstance(packed, GemmPackedWeight):
        return graph.call_function(fast_kernel.op("dense_conv2d_nhwc"), (x, *attrs, packed.rows, bias, residual, *geometry))
    if isinstance(packed, ChannelPackedWeight):
        args = (x, *attrs, packed.rows, packed.n, packed.m, bias, residual, *geometry)
        return graph.call_function(fast_kernel.op("hybrid_sparse_conv2d_nhwc"), args)
    args = (x, *attrs, packed.in_features, bias, residual, *geometry, True)
    return graph.call_function(fast_kernel.op("hybrid_sparse_conv2d_fast"), args)


def is_plain_conv(module: nn.Module) -> bool:
    """A float32 Conv2d with zero padding given as numbers: what crisp's conv kernels compute."""
    return (isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and module.weight.dtype == torch.float32)


def module_calls_on_4d_float(gm: fx.GraphModule, accept: Callable[[nn.Module], bool]) -> list[tuple[fx.Node, nn.Module]]:
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


def replace_module_call(gm: fx.GraphModule, node: fx.Node, fuse_activations: bool,
                        make_call: Callable[[float, float], Any]) -> str:
    """Replace the module call ``node`` (and a ReLU/ReLU6 right after it) with the node
    ``make_call(clamp_min, clamp_max)`` builds; returns what was replaced, e.g. "conv1+relu"."""
    act = following_activation(gm, node, fuse_activations)
    end, clamp = (node, (-INF, INF)) if act is None else (sole_user(node), act[1:])
    with gm.graph.inserting_before(node):
        fused = make_call(*clamp)
    fused.meta.update(end.meta)
    end.replace_all_uses_with(fused)
    if end is not node:
        gm.graph.erase_node(end)
    gm.graph.erase_node(node)
    return node.target + ("+" + act[0] if act is not None else "")
