"""SelectHybridMasks: pick every prunable layer's hybrid N:M + block mask from its saliency,
globally across layers under an allocation rule, so the pruned layers reach the target sparsity
(see :mod:`crisp.sparsity.selection`). Records target and achieved sparsity in ``graph_module.meta``."""

from __future__ import annotations

from torch import fx

from crisp.sparsity.gemm_view import gemm_to_weight, weight_to_gemm
from crisp.ir.tracing import layer_nodes
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.selection import DEFAULT_ALLOCATION, check_allocation, select_hybrid_masks

from crisp.passes.base import CrispPass


class SelectHybridMasks(CrispPass):
    needs = ("layers", "saliency")
    adds = ("masks",)

    def __init__(self, pattern: Pattern, sparsity: float, allocation: str = DEFAULT_ALLOCATION):
        self.pattern = pattern
        self.sparsity = sparsity
        self.allocation = check_allocation(allocation)

    def call(self, graph_module: fx.GraphModule) -> bool:
        infos = [info for _, info in layer_nodes(graph_module) if info.prunable]
        gemm = {i.name: weight_to_gemm(i.saliency) for i in infos}
        result = select_hybrid_masks(gemm, self.pattern, self.sparsity, self.allocation)
        for info in infos:
            info.mask = gemm_to_weight(result.layers[info.name].mask, info.weight_shape)
        graph_module.meta["crisp_sparsity"] = {
            "target": result.target_sparsity,
            "achieved": result.achieved_sparsity,
            "pattern": self.pattern,
            "allocation": self.allocation,
        }
        return False
