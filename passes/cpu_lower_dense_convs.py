"""LowerDenseConvs: run the dense (unpruned, groups=1) convs left in the graph, e.g. a stem conv
whose K is smaller than one block, on the faster, by measurement on the layer's real shape
(:class:`~crisp.passes.cpu_kernel_choice.Tuner`), of crisp's conv kernels with every weight kept
(no second thread pool between two crisp layers) and torch's own conv (oneDNN, channels-last);
a following ReLU / ReLU6 fused.

The convs it cannot run get channels-last weights, since the activations around them flow
channels-last. Recorded under ``meta[CPU_KEY]["dense_convs"]`` (e.g. ``"conv1+relu"``)
and, with the measured times, under ``meta[CPU_KEY]["kernel_choices"]``.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from crisp.runtime import fast_kernel

from crisp.passes.base import CrispPass
from crisp.passes.cpu_kernel_choice import Context, Tuner
from crisp.passes.cpu_common import (
    INF, PackedLayer, arrives_channels_last, conv_call, following_activation, is_plain_conv, module_calls_on_4d_float,
    record, replace_module_call, require_fast_kernels, tidy,
)


class LowerDenseConvs(CrispPass):
    needs = ("shapes",)
    adds = ("cpu_dense_convs",)

    def __init__(self, fuse_activations: bool = True):
        self.fuse_activations = fuse_activations

    def call(self, graph_module: fx.GraphModule) -> bool:
        require_fast_kernels(self.name)
        gm, lowered, choices = graph_module, [], {}
        tuner, isa = Tuner(), fast_kernel.cpu_capability()
        for node, conv in module_calls_on_4d_float(gm, lambda m: is_plain_conv(m) and m.groups == 1):
            geometry = (list(conv.kernel_size), list(conv.stride), list(conv.padding), list(conv.dilation))
            x_shape = tuple(node.args[0].meta["tensor_meta"].shape)
            bias = None if conv.bias is None else conv.bias.detach().float()
            act = following_activation(gm, node, self.fuse_activations)
            context = Context(clamp=(-INF, INF) if act is None else act[1:],
                              channels_last_input=arrives_channels_last(node.args[0]))
            choice = tuner.choose_dense(conv.weight, "dense_conv", x_shape, geometry, bias, context)
            packed = choice.packed
            gm.set_submodule(node.target, PackedLayer(packed, conv.bias))

            def call(lo, hi, node=node, conv=conv, packed=packed):
                attrs = [gm.graph.get_attr(f"{node.target}.{name}") for name in packed.tensors()]
                bias = gm.graph.get_attr(f"{node.target}.bias") if conv.bias is not None else None
                return conv_call(gm.graph, packed, node.args[0], attrs, bias, None, (*geometry, lo, hi))

            name = node.target
            lowered.append(replace_module_call(gm, node, self.fuse_activations, call))
            choices[name] = {"kernel": choice.kernel, "isa": isa, "reason": "left dense; " + choice.reason,
                             "times_ms": choice.times_ms}
        record(gm, "dense_convs", lowered)
        record(gm, "kernel_choices", choices)
        tidy(gm)
        for module in gm.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)
        return bool(lowered)
