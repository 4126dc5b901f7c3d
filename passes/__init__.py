"""crisp.passes: the compiler's passes, one per module, each a ``torch.fx.passes.infra`` pass, and
the :class:`Pipeline` that runs them.

The default pipeline (``crisp.default_pipeline``): PropagateShapes -> FindPrunableLayers ->
ComputeSaliency -> SelectHybridMasks -> FoldBatchNorm -> LowerToHybridSparseGemm ->
VerifyAgainstMaskedDense. The ``cpu`` target's pipeline then runs FuseSparseLayersForCpu ->
FoldDenseBatchNorms -> LowerDepthwiseConvs -> LowerDenseConvs -> FuseExpandDepthwise -> LowerPools on
crisp's fast kernels. ``crisp.PIPELINES`` lists every named pipeline and its passes.
"""

from crisp.passes.base import CrispPass
from crisp.passes.compute_saliency import ComputeSaliency, magnitude_saliency
from crisp.passes.cpu_common import PackedLayer
from crisp.passes.cpu_fuse_expand_depthwise import FuseExpandDepthwise
from crisp.passes.cpu_fuse_sparse_layers import FuseSparseLayersForCpu
from crisp.passes.cpu_lower_dense_convs import LowerDenseConvs
from crisp.passes.cpu_lower_depthwise import DepthwiseLayer, LowerDepthwiseConvs
from crisp.passes.cpu_lower_pools import LowerPools
from crisp.passes.find_prunable_layers import FindPrunableLayers
from crisp.passes.fold_batchnorm import FoldBatchNorm
from crisp.passes.fold_dense_batchnorms import FoldDenseBatchNorms
from crisp.passes.lower_to_sparse_gemm import CompactWeight, LowerToHybridSparseGemm
from crisp.passes.propagate_shapes import PropagateShapes
from crisp.passes.runner import NamedPipeline, Pipeline, named_pipeline
from crisp.passes.select_masks import SelectHybridMasks
from crisp.passes.verify import VerifyAgainstMaskedDense

__all__ = [
    "CompactWeight", "ComputeSaliency", "CrispPass", "DepthwiseLayer", "FindPrunableLayers", "FoldBatchNorm",
    "FoldDenseBatchNorms", "FuseExpandDepthwise", "FuseSparseLayersForCpu", "LowerDenseConvs", "LowerDepthwiseConvs", "LowerPools",
    "LowerToHybridSparseGemm", "NamedPipeline", "PackedLayer", "Pipeline", "PropagateShapes", "SelectHybridMasks",
    "VerifyAgainstMaskedDense", "magnitude_saliency", "named_pipeline",
]
