"""`CrispPass`: the base of crisp's passes, compatible with ``torch.fx.passes.infra``.

A pass states the analyses it ``needs`` and the ones it ``adds``. Calling it checks the needs
(naming the pass that provides a missing one), runs :meth:`call` on a *copy* of the graph module
so the input is never changed, records what it added, and returns a ``PassResult``.
"""

from __future__ import annotations

from typing import ClassVar

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from crisp.errors import PassOrderError
from crisp.ir.tracing import analyses, copy_graph_module, mark_analysis

_PROVIDERS: dict[str, list[str]] = {}


class CrispPass(PassBase):
    needs: ClassVar[tuple[str, ...]] = ()
    adds: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for analysis in cls.adds:
            _PROVIDERS.setdefault(analysis, []).append(cls.__name__)

    @property
    def name(self) -> str:
        return type(self).__name__

    def requires(self, graph_module: fx.GraphModule) -> None:
        have = analyses(graph_module)
        for need in self.needs:
            if need not in have:
                providers = " or ".join(_PROVIDERS.get(need, ["<no registered pass>"]))
                raise PassOrderError(
                    f"pass {self.name} needs the analysis {need!r}, which {providers} provides; run it first"
                )

    def __call__(self, graph_module: fx.GraphModule) -> PassResult:
        if not isinstance(graph_module, fx.GraphModule):
            raise PassOrderError(f"pass {self.name} takes a torch.fx.GraphModule, got {type(graph_module).__name__}")
        self.requires(graph_module)
        work = copy_graph_module(graph_module)
        modified = self.call(work)
        mark_analysis(work, *self.adds)
        work.graph.lint()
        work.recompile()
        self.ensures(work)
        return PassResult(work, bool(modified))

    def call(self, graph_module: fx.GraphModule) -> bool:  # type: ignore[override]
        """Do the work on ``graph_module`` (already a private copy); return whether the graph changed."""
        raise NotImplementedError
