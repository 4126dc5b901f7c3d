"""LowerPools: run MaxPool2d (dilation 1, floor mode) and global AdaptiveAvgPool2d modules on 4-d
float32 activations with crisp's channels-last pools, on the same threads as the convs.

Pools the kernels do not compute exactly stay torch ops. Recorded under
``meta[CPU_KEY]["lowered_pools"]``.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from crisp.runtime import fast_kernel
from crisp.runtime.fast_kernel import size_pair

from crisp.passes.base import CrispPass
from crisp.passes.cpu_common import module_calls_on_4d_float, record, replace_module_call, require_fast_kernels, tidy


def pool_call(module: nn.Module) -> tuple[Any, tuple] | None:
    """(op, extra args) of the crisp pool that computes ``module`` exactly, or None."""
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
        for node, module in module_calls_on_4d_float(gm, lambda m: pool_call(m) is not None):
            op, extra = pool_call(module)
            lowered.append(replace_module_call(
                gm, node, False, lambda lo, hi, node=node, op=op, extra=extra: gm.graph.call_function(op, (node.args[0], *extra))))
        record(gm, "lowered_pools", lowered)
        tidy(gm)
        return bool(lowered)
