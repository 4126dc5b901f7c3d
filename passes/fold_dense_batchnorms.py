"""FoldDenseBatchNorms: after lowering, fold every eval-mode BatchNorm that directly follows a
layer left dense (e.g. a depthwise conv, or one with K below a block) into that layer.

The pruned layers' BatchNorms were folded before lowering (:class:`FoldBatchNorm`); this pass
does the same for the rest, so that the cpu passes can run those convs with the bias fused.
The folded BatchNorms are recorded under ``meta[CPU_KEY]["folded_batchnorms"]``.
"""

from __future__ import annotations

from torch import fx

from crisp.ir.batchnorm import fold_batchnorms

from crisp.passes.base import CrispPass
from crisp.passes.cpu_common import record


class FoldDenseBatchNorms(CrispPass):
    needs = ("lowered",)
    adds = ("dense_batchnorms_folded",)

    def call(self, graph_module: fx.GraphModule) -> bool:
        folded = [bn for _, bn in fold_batchnorms(graph_module)]
        record(graph_module, "folded_batchnorms", folded)
        return bool(folded)
