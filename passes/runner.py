"""`Pipeline` runs passes in order; `named_pipeline` gives a pipeline builder a name and its pass list.

A named builder is what ``crisp.PIPELINES`` holds: calling it builds the :class:`Pipeline`, and
its ``passes`` (shown by ``repr``) name the pass classes it runs, in order.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable, Sequence

from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from crisp.progress import note, progress

log = logging.getLogger(__name__)


class Pipeline:
    """Run passes in order, each on the previous one's result; never changes the input."""

    def __init__(self, passes: Sequence[Callable[[fx.GraphModule], PassResult]], progress: bool = False):
        self.passes = list(passes)
        self.progress = progress

    @property
    def names(self) -> list[str]:
        return [getattr(p, "name", type(p).__name__) for p in self.passes]

    def __repr__(self) -> str:
        return f"Pipeline({' -> '.join(self.names)})"

    def __call__(self, graph_module: fx.GraphModule) -> PassResult:
        modified = False
        total = len(self.passes)
        for i, p in enumerate(progress(self.passes, enabled=None if self.progress else False, desc="crisp", unit="pass"), 1):
            name = getattr(p, "name", type(p).__name__)
            start = time.perf_counter()
            result = p(graph_module)
            graph_module, modified = result.graph_module, modified or result.modified
            note(log, self.progress, "  [%d/%d] %s %.1fs", i, total, name, time.perf_counter() - start)
        return PassResult(graph_module, modified)


class NamedPipeline:
    """A pipeline builder with a name: calling it builds the :class:`Pipeline`; ``passes`` lists
    the pass classes that pipeline runs, in order (optional ones included)."""

    def __init__(self, name: str, passes: Sequence[type], build: Callable[..., Pipeline]):
        self.name, self.passes, self.build = name, tuple(passes), build
        functools.update_wrapper(self, build)

    def __call__(self, *args, **kwargs) -> Pipeline:
        return self.build(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<pipeline {self.name!r}: {' -> '.join(p.__name__ for p in self.passes)}>"


def named_pipeline(name: str, *passes: type) -> Callable[[Callable[..., Pipeline]], NamedPipeline]:
    """Decorator: the builder becomes a :class:`NamedPipeline` called ``name`` that runs ``passes``."""
    return lambda build: NamedPipeline(name, passes, build)
