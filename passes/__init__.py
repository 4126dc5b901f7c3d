"""crisp.passes: the compiler's passes, one per module, each a ``torch.fx.passes.infra`` pass.

In pipeline order: PropagateShapes -> FindPrunableLayers -> ComputeSaliency ->
SelectHybridMasks -> FoldBatchNorm -> LowerToHybridSparseGemm -> VerifyAgainstMaskedDense.
"""

from .base import CrispPass
from .compute_saliency import ComputeSaliency, magnitude_saliency
from .find_prunable_layers import FindPrunableLayers
from .fold_batchnorm import FoldBatchNorm
from .lower_to_sparse_gemm import CompactWeight, LowerToHybridSparseGemm
from .propagate_shapes import PropagateShapes
from .select_masks import SelectHybridMasks
from .verify import VerifyAgainstMaskedDense

__all__ = [
    "CompactWeight", "ComputeSaliency", "CrispPass", "FindPrunableLayers", "FoldBatchNorm",
    "LowerToHybridSparseGemm", "PropagateShapes", "SelectHybridMasks", "VerifyAgainstMaskedDense",
    "magnitude_saliency",
]
