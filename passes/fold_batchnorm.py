"""FoldBatchNorm: fold an eval-mode BatchNorm2d that directly follows a pruned conv into the
conv's weight and bias. Per-output-channel scaling keeps every zero a zero, so the mask (and
the hybrid pattern) is unchanged."""

from __future__ import annotations

import torch
from torch import fx, nn

from crisp.ir.tracing import layer_nodes

from crisp.passes.base import CrispPass


def fold_batchnorm_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Rewrite ``conv`` in place so that ``conv(x) == bn(conv_before(x))`` in eval mode."""
    with torch.no_grad():
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.affine:
            shift = shift + bn.bias
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
        new_bias = bias * scale + shift
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))


class FoldBatchNorm(CrispPass):
    needs = ("layers", "masks")
    adds = ("batchnorm_folded",)

    def call(self, graph_module: fx.GraphModule) -> bool:
        changed = False
        for node, info in list(layer_nodes(graph_module)):
            if info.kind != "conv" or info.mask is None or len(node.users) != 1:
                continue
            user = next(iter(node.users))
            if user.op != "call_module" or user.args[:1] != (node,) or len(user.args) != 1 or user.kwargs:
                continue
            bn = graph_module.get_submodule(user.target)
            if type(bn) is not nn.BatchNorm2d or bn.training or bn.running_var is None:
                continue
            fold_batchnorm_into_conv(graph_module.get_submodule(node.target), bn)
            user.replace_all_uses_with(node)
            graph_module.graph.erase_node(user)
            info.folded_batchnorm = user.target
            info.has_bias = True
            changed = True
        if changed:
            graph_module.delete_all_unused_submodules()
        return changed
