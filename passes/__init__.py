"""crisp.passes: the compiler's passes, one per module, each a ``torch.fx.passes.infra`` pass.

In pipeline order: PropagateShapes -> FindPrunableLayers -> ComputeSaliency ->
SelectHybridMasks -> FoldBatchNorm -> LowerToHybridSparseGemm -> VerifyAgainstMaskedDense.
"""

from crisp.passes.base import CrispPass
from crisp.passes.compute_saliency import ComputeSaliency, magnitude_saliency
from crisp.passes.find_prunable_layers import FindPrunableLayers
from crisp.passes.fold_batchnorm import FoldBatchNorm
from crisp.passes.lower_to_sparse_gemm import CompactWeight, LowerToHybridSparseGemm
from crisp.passes.propagate_shapes import PropagateShapes
from crisp.passes.select_masks import SelectHybridMasks
from crisp.passes.verify import VerifyAgainstMaskedDense

__all__ = [
    "CompactWeight", "ComputeSaliency", "CrispPass", "FindPrunableLayers", "FoldBatchNorm",
    "LowerToHybridSparseGemm", "PropagateShapes", "SelectHybridMasks", "VerifyAgainstMaskedDense",
    "magnitude_saliency",
]
