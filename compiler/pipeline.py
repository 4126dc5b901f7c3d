"""The named pass pipelines: ``PIPELINES`` maps each name to its builder, and a builder's ``repr``
lists its passes in order (``crisp.PIPELINES["cpu"]``).

``default_pipeline(...)`` builds: propagate shapes -> find prunable layers -> saliency ->
select masks -> fold BatchNorm -> lower -> verify; the ``cpu`` target's ``cpu_pipeline(...)``
then puts the lowered graph on crisp's fast CPU kernels. Each element is a plain
``torch.fx.passes.infra`` pass, so a user can take any of them into their own :class:`Pipeline`.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from crisp.backends.cpu import cpu_pipeline
from crisp.passes import (
    ComputeSaliency, FindPrunableLayers, FoldBatchNorm, LowerToHybridSparseGemm, NamedPipeline, Pipeline,
    PropagateShapes, SelectHybridMasks, VerifyAgainstMaskedDense, named_pipeline,
)
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.selection import DEFAULT_ALLOCATION

__all__ = ["PIPELINES", "Pipeline", "cpu_pipeline", "default_pipeline"]


@named_pipeline("default", PropagateShapes, FindPrunableLayers, ComputeSaliency, SelectHybridMasks, FoldBatchNorm,
                LowerToHybridSparseGemm, VerifyAgainstMaskedDense)
def default_pipeline(
    original: nn.Module,
    example_inputs: tuple,
    pattern: Pattern,
    sparsity: float,
    saliency="magnitude",
    exclude: Sequence[str] = (),
    verify: bool = True,
    progress: bool = False,
    allocation: str = DEFAULT_ALLOCATION,
) -> Pipeline:
    """The default pipeline; ``original`` is the (eval-mode) model that verification compares with."""
    passes = [
        PropagateShapes(example_inputs),
        FindPrunableLayers(pattern, tuple(exclude)),
        ComputeSaliency(saliency),
        SelectHybridMasks(pattern, sparsity, allocation),
        FoldBatchNorm(),
        LowerToHybridSparseGemm(),
    ]
    if verify:
        passes.append(VerifyAgainstMaskedDense(original, example_inputs))
    return Pipeline(passes, progress=progress)


PIPELINES: dict[str, NamedPipeline] = {p.name: p for p in (default_pipeline, cpu_pipeline)}
