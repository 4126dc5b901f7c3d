"""FoldBatchNorm: fold an eval-mode BatchNorm2d that directly follows a pruned conv into the
conv's weight and bias. Per-output-channel scaling keeps every zero a zero, so the mask (and
the hybrid pattern) is unchanged."""

from __future__ import annotations

from torch import fx

from crisp.ir.batchnorm import fold_batchnorms
from crisp.ir.layer_info import META_KEY, LayerInfo

from crisp.passes.base import CrispPass


def _pruned_conv(node: fx.Node) -> bool:
    info = node.meta.get(META_KEY)
    return isinstance(info, LayerInfo) and info.kind == "conv" and info.mask is not None


class FoldBatchNorm(CrispPass):
    needs = ("layers", "masks")
    adds = ("batchnorm_folded",)

    def call(self, graph_module: fx.GraphModule) -> bool:
        folded = fold_batchnorms(graph_module, _pruned_conv)
        for node, bn in folded:
            info = node.meta[META_KEY]
            info.folded_batchnorm = bn
            info.has_bias = True
        return bool(folded)
