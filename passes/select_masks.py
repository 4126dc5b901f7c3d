"""SelectHybridMasks: pick every prunable layer's hybrid N:M + block mask from its saliency,
globally across layers, so the pruned layers reach the target sparsity
(see :mod:`crisp.sparsity.selection`). Records target and achieved sparsity in ``graph_module.meta``."""

from __future__ import annotations

from torch import fx

from crisp.sparsity.gemm_view import gemm_to_weight, weight_to_gemm
from crisp.ir.tracing import layer_nodes
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.selection import select_hybrid_masks

from crisp.passes.base import CrispPass


class SelectHybridMasks(CrispPass):
    needs = ("layers", "saliency")
    adds = ("masks",)

    def __init__(self, pattern: Pattern, sparsity: float):
        self.pattern = pattern
        self.sparsity = sparsity

    def call(self, graph_module: fx.GraphModule) -> bool:
        infos = [info for _, info in layer_nodes(graph_module) if info.prunable]
        result = select_hybrid_masks({i.name: weight_to_gemm(i.saliency) for i in infos}, self.pattern, self.sparsity)
        for info in infos:
            info.mask = gemm_to_weight(result.layers[info.name].mask, info.weight_shape)
        graph_module.meta["crisp_sparsity"] = {
            "target": result.target_sparsity,
            "achieved": result.achieved_sparsity,
            "pattern": self.pattern,
        }
        return False
