"""Named pass pipelines and the runner that shows progress.

``default_pipeline(...)`` builds: propagate shapes -> find prunable layers -> saliency ->
select masks -> fold BatchNorm -> lower -> verify. Each element is a plain
``torch.fx.passes.infra`` pass, so a user can take any of them into their own pipeline.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Sequence

from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassResult

from crisp.sparsity.pattern import Pattern


class Pipeline:
    """Run passes in order, each on the previous one's result; never changes the input."""

    def __init__(self, passes: Sequence[Callable[[fx.GraphModule], PassResult]], progress: bool = False):
        self.passes = list(passes)
        self.progress = progress

    def __call__(self, graph_module: fx.GraphModule) -> PassResult:
        modified = False
        total = len(self.passes)
        for i, p in enumerate(self.passes, 1):
            name = getattr(p, "name", type(p).__name__)
            start = time.perf_counter()
            if self.progress:
                print(f"  [{i}/{total}] {name} ...", end="", file=sys.stderr, flush=True)
            result = p(graph_module)
            graph_module, modified = result.graph_module, modified or result.modified
            if self.progress:
                print(f" {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        return PassResult(graph_module, modified)


def default_pipeline(
    original: nn.Module,
    example_inputs: tuple,
    pattern: Pattern,
    sparsity: float,
    saliency="magnitude",
    exclude: Sequence[str] = (),
    verify: bool = True,
    progress: bool = False,
) -> Pipeline:
    """The default pipeline; ``original`` is the (eval-mode) model that verification compares with."""
    from crisp.passes import (
        ComputeSaliency, FindPrunableLayers, FoldBatchNorm, LowerToHybridSparseGemm, PropagateShapes,
        SelectHybridMasks, VerifyAgainstMaskedDense,
    )

    passes = [
        PropagateShapes(example_inputs),
        FindPrunableLayers(pattern, tuple(exclude)),
        ComputeSaliency(saliency),
        SelectHybridMasks(pattern, sparsity),
        FoldBatchNorm(),
        LowerToHybridSparseGemm(),
    ]
    if verify:
        passes.append(VerifyAgainstMaskedDense(original, example_inputs))
    return Pipeline(passes, progress=progress)


PIPELINES: dict[str, Callable[..., Pipeline]] = {"default": default_pipeline}
