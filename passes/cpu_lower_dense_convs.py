"""LowerDenseConvs: run the dense (unpruned, groups=1) convs left in the graph, e.g. a stem conv
whose K is smaller than one block, on crisp's sparse conv kernels with every weight kept, a
following ReLU / ReLU6 fused: no torch op (and no second thread pool) between two crisp layers.

The convs it cannot run get channels-last weights, since the activations around them flow
channels-last. Recorded under ``meta[CPU_KEY]["dense_convs"]`` (e.g. ``"conv1+relu"``).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from crisp.sparsity.hybrid_tensor import HybridSparseTensor

from crisp.passes.base import CrispPass
from crisp.passes.cpu_kernel_choice import dense_pattern
from crisp.passes.cpu_common import (
    PackedLayer, conv_call, is_plain_conv, module_calls_on_4d_float, pack, record, replace_module_call,
    require_fast_kernels, tidy,
)


class LowerDenseConvs(CrispPass):
    needs = ("shapes",)
    adds = ("cpu_dense_convs",)

    def __init__(self, fuse_activations: bool = True):
        self.fuse_activations = fuse_activations

    def call(self, graph_module: fx.GraphModule) -> bool:
        require_fast_kernels(self.name)
        gm, lowered = graph_module, []
        for node, conv in module_calls_on_4d_float(gm, lambda m: is_plain_conv(m) and m.groups == 1):
            weight = conv.weight.detach().float()
            compact = HybridSparseTensor.from_dense(weight, torch.ones_like(weight, dtype=torch.bool),
                                                    dense_pattern(weight[0].numel()))
            packed = pack(compact, conv.in_channels, True)
            gm.set_submodule(node.target, PackedLayer(packed, conv.bias))

            def call(lo, hi, node=node, conv=conv, packed=packed):
                attrs = [gm.graph.get_attr(f"{node.target}.{name}") for name in packed.tensors()]
                bias = gm.graph.get_attr(f"{node.target}.bias") if conv.bias is not None else None
                geometry = (list(conv.kernel_size), list(conv.stride), list(conv.padding), list(conv.dilation), lo, hi)
                return conv_call(gm.graph, packed, node.args[0], attrs, bias, None, geometry)

            lowered.append(replace_module_call(gm, node, self.fuse_activations, call))
        record(gm, "dense_convs", lowered)
        tidy(gm)
        for module in gm.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)
        return bool(lowered)
