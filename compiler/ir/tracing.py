"""The IR: a ``torch.fx.GraphModule`` traced from the user's model, plus helpers to read the
analysis results passes leave in ``node.meta`` and ``graph_module.meta``.

When ``torch.fx.symbolic_trace`` cannot trace a model (shape-dependent control flow, for example)
and example inputs are given, the model is captured with ``torch.export`` (non-strict) instead and
its functional layers are raised back to modules (:mod:`crisp.ir.capture`). A TraceError names the
module that could not be traced, and suggests ``exclude`` / ``leaf_modules``, only when both fail.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from typing import Iterable, Iterator

import torch
from torch import fx, nn

from crisp.errors import TraceError
from crisp.ir.capture import export_graph, raise_functional_layers
from crisp.ir.layer_info import META_KEY, LayerInfo
from crisp.ir.prunable import layer_kind

log = logging.getLogger(__name__)
ANALYSES_KEY = "crisp_analyses"  # graph_module.meta: names of the analyses already run


class _CrispTracer(fx.Tracer):
    """A tracer that keeps chosen modules opaque and remembers where tracing failed."""

    def __init__(self, leaf_modules: Iterable[str] = ()):
        super().__init__()
        self.leaf_names = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if any(module_qualified_name == n or module_qualified_name.startswith(n + ".") for n in self.leaf_names):
            return True
        if layer_kind(m) is not None:  # a Conv2d/Linear subclass with the parent's forward is an ordinary layer
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # annotate the innermost module once, then let it bubble up
            if not hasattr(exc, "_crisp_module"):
                try:
                    exc._crisp_module = (self.path_of_module(m), type(m).__name__)
                except Exception:
                    exc._crisp_module = ("<unknown>", type(m).__name__)
            raise


def module_paths(model: nn.Module, names: Iterable[str]) -> tuple[str, ...]:
    """``names`` with every fnmatch pattern among them replaced by the module paths it matches."""
    out: list[str] = []
    for name in names:
        if any(c in name for c in "*?["):
            out += [path for path, _ in model.named_modules() if path and fnmatch.fnmatchcase(path, name)]
        else:
            out.append(name)
    return tuple(dict.fromkeys(out))


def trace(model: nn.Module, leaf_modules: Iterable[str] = (), example_inputs: tuple | None = None) -> fx.GraphModule:
    """Symbolically trace ``model``; modules named in ``leaf_modules`` (and their children) stay opaque.
    If that fails and ``example_inputs`` are given, capture with ``torch.export`` instead (then the
    layers inside ``leaf_modules`` stay dense); ``gm.meta["crisp_frontend"]`` says which ran.
    An entry may be an fnmatch pattern (``"layer4.*"``): every module it matches stays opaque."""
    leaf_modules = module_paths(model, leaf_modules)
    tracer = _CrispTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        also = ""
        if example_inputs is not None:
            try:
                gm = export_graph(model, example_inputs, skip=tuple(leaf_modules))
            except Exception as export_exc:
                also = f" torch.export could not capture it either ({type(export_exc).__name__}: {(str(export_exc).strip().splitlines() or [''])[0][:200]})."
            else:
                log.info("crisp: torch.fx could not trace %s (%s); captured it with torch.export",
                         type(model).__name__, type(exc).__name__)
                gm.meta[ANALYSES_KEY] = set()
                gm.meta["crisp_frontend"] = "torch.export"
                return gm
        path, cls = getattr(exc, "_crisp_module", ("<root>", type(model).__name__))
        where = f"module {path!r} ({cls})" if path != "<root>" else f"the model's own forward ({cls})"
        hint = (
            f"pass exclude=[{path!r}] (it then stays dense and runs as written) or leaf_modules=[{path!r}]"
            if path != "<root>"
            else "move the data-dependent code into a submodule and pass its name in exclude=[...]"
        )
        raise TraceError(f"torch.fx could not trace {where}: {type(exc).__name__}: {exc}.{also} To compile the rest, {hint}.") from exc
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    gm.meta[ANALYSES_KEY] = set()
    gm.meta["crisp_frontend"] = "torch.fx"
    return raise_functional_layers(gm, skip=tuple(leaf_modules))  # F.conv2d(x, self.weight) and the like


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy (parameters, buffers, graph and node meta) so a pass never changes its input."""
    new = copy.deepcopy(gm)
    new.meta = copy.deepcopy(getattr(gm, "meta", {}))
    return new


def analyses(gm: fx.GraphModule) -> set[str]:
    return set(getattr(gm, "meta", {}).get(ANALYSES_KEY, set()))


def mark_analysis(gm: fx.GraphModule, *names: str) -> None:
    gm.meta.setdefault(ANALYSES_KEY, set()).update(names)


def layer_nodes(gm: fx.GraphModule) -> Iterator[tuple[fx.Node, LayerInfo]]:
    """Every node that carries a LayerInfo, in graph order."""
    for node in gm.graph.nodes:
        info = node.meta.get(META_KEY)
        if isinstance(info, LayerInfo):
            yield node, info


def layers_of(gm: fx.GraphModule) -> list[LayerInfo]:
    """All candidate layers: those in the graph and those hidden inside opaque (excluded) modules."""
    return [info for _, info in layer_nodes(gm)] + list(gm.meta.get("crisp_opaque_layers", []))


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    return gm.get_submodule(node.target)
