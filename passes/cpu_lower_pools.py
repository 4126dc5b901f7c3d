"""LowerPools: run MaxPool2d (dilation 1, floor mode) and AdaptiveAvgPool2d modules on 4-d
float32 activations with crisp's channels-last pools, on the same threads as the convs: a global
average pool on ``global_avg_pool_nhwc``, one whose output size divides the input (equal, disjoint
windows) as a depthwise conv with uniform weights 1/(kh*kw) and stride = window. Another thread
pool woken between two crisp layers costs more than these pools take (on a shared machine, a
fork-join pool waiting for a descheduled thread loses a whole time slice).

Pools the kernels do not compute exactly stay torch ops. Recorded under
``meta[CPU_KEY]["lowered_pools"]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from crisp.runtime import fast_kernel
from crisp.runtime.fast_kernel import size_pair

from crisp.passes.base import CrispPass
from crisp.passes.cpu_common import module_calls_on_4d_float, record, replace_module_call, require_fast_kernels, tidy


def _window(output_size, hw: tuple[int, int]) -> list[int] | None:
    """The (kh, kw) window of an adaptive average pool over ``hw`` whose windows are equal and disjoint."""
    out = size_pair(output_size) if not isinstance(output_size, (list, tuple)) or None not in output_size else None
    if out is None or any(o <= 0 or n % o for o, n in zip(out, hw)):
        return None
    return [n // o for o, n in zip(out, hw)]


class AvgPoolLayer(nn.Module):
    """An average pool over disjoint equal windows as a depthwise conv: weight ``[kh*kw, C]`` of 1/(kh*kw)."""

    def __init__(self, channels: int, window: list[int]):
        super().__init__()
        taps = window[0] * window[1]
        self.register_buffer("weight", torch.full((taps, channels), 1.0 / taps))
        self.window = window


def pool_call(module: nn.Module, shape: tuple | None = None) -> tuple[Any, tuple] | None:
    """(op, extra args) of the crisp pool that computes ``module`` exactly, or None (an adaptive
    average pool that is not global: see :class:`AvgPoolLayer`)."""
    if isinstance(module, nn.MaxPool2d):
        kernel, padding = size_pair(module.kernel_size), size_pair(module.padding)
        if (module.ceil_mode or module.return_indices or size_pair(module.dilation) != [1, 1]
                or any(2 * p > k for p, k in zip(padding, kernel))):
            return None
        return fast_kernel.op("max_pool2d_nhwc"), (kernel, size_pair(module.stride or module.kernel_size), padding)
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1), [1, 1]):
        return fast_kernel.op("global_avg_pool_nhwc"), ()
    return None


class LowerPools(CrispPass):
    needs = ("shapes",)
    adds = ("cpu_pools",)

    def call(self, graph_module: fx.GraphModule) -> bool:
        require_fast_kernels(self.name)
        gm, lowered = graph_module, []
        for node, module in module_calls_on_4d_float(gm, lambda m: isinstance(m, (nn.MaxPool2d, nn.AdaptiveAvgPool2d))):
            found = pool_call(module)
            if found is not None:
                op, extra = found
                make = lambda lo, hi, node=node, op=op, extra=extra: gm.graph.call_function(op, (node.args[0], *extra))
            else:
                shape = tuple(node.args[0].meta["tensor_meta"].shape)
                window = _window(module.output_size, shape[2:]) if isinstance(module, nn.AdaptiveAvgPool2d) else None
                if window is None:
                    continue
                gm.set_submodule(node.target, AvgPoolLayer(shape[1], window))

                def make(lo, hi, node=node, window=window):
                    weight = gm.graph.get_attr(f"{node.target}.weight")
                    return gm.graph.call_function(fast_kernel.op("depthwise_conv2d_nhwc"), (
                        node.args[0], weight, None, window, window, [0, 0], [1, 1], -float("inf"), float("inf")))
            lowered.append(replace_module_call(gm, node, False, make))
        record(gm, "lowered_pools", lowered)
        tidy(gm)
        return bool(lowered)
