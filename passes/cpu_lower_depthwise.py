"""LowerDepthwiseConvs: run dense depthwise convs (MobileNetV2's) on crisp's channels-last
kernel ``crisp::depthwise_conv2d_nhwc``, bias and a following ReLU / ReLU6 fused.

Recorded under ``meta[CPU_KEY]["dense_convs"]`` (e.g. ``"features.2.conv.1.0+relu6"``).
"""

from __future__ import annotations

from torch import fx, nn

from crisp.runtime import fast_kernel

from crisp.passes.base import CrispPass
from crisp.passes.cpu_common import (
    is_plain_conv, module_calls_on_4d_float, record, replace_module_call, require_fast_kernels, tidy,
)


class DepthwiseLayer(nn.Module):
    """A dense depthwise conv for ``crisp::depthwise_conv2d_nhwc``: weight as ``[kh*kw, C]``, bias."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        c, _, kh, kw = conv.weight.shape
        self.register_buffer("weight", conv.weight.detach().reshape(c, kh * kw).t().contiguous().float())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        self.geometry = ([kh, kw], list(conv.stride), list(conv.padding), list(conv.dilation))


def is_depthwise(module: nn.Module) -> bool:
    return is_plain_conv(module) and module.groups == module.in_channels == module.out_channels > 1


class LowerDepthwiseConvs(CrispPass):
    needs = ("shapes",)
    adds = ("cpu_depthwise_convs",)

    def __init__(self, fuse_activations: bool = True):
        self.fuse_activations = fuse_activations

    def call(self, graph_module: fx.GraphModule) -> bool:
        require_fast_kernels(self.name)
        gm, lowered = graph_module, []
        for node, conv in module_calls_on_4d_float(gm, is_depthwise):
            layer = DepthwiseLayer(conv)
            gm.set_submodule(node.target, layer)

            def call(lo, hi, node=node, layer=layer):
                weight = gm.graph.get_attr(f"{node.target}.weight")
                bias = gm.graph.get_attr(f"{node.target}.bias") if layer.bias is not None else None
                return gm.graph.call_function(fast_kernel.op("depthwise_conv2d_nhwc"),
                                              (node.args[0], weight, bias, *layer.geometry, lo, hi))

            lowered.append(replace_module_call(gm, node, self.fuse_activations, call))
        record(gm, "dense_convs", lowered)
        tidy(gm)
        return bool(lowered)
