"""FindPrunableLayers: attach a :class:`LayerInfo` to every Conv2d / Linear call and decide, by the
rule of :mod:`crisp.ir.prunable`, whether it is pruned. Layers inside opaque (excluded) modules are
recorded too, so the report can say why they stayed dense.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from crisp.errors import ModelError
from crisp.ir.layer_info import META_KEY, LayerInfo
from crisp.ir.prunable import describe_module, excluded_by, weight_uses
from crisp.sparsity.pattern import Pattern

from crisp.passes.base import CrispPass


def _check_finite(name: str, module: nn.Module) -> None:
    for pname, tensor in module.named_parameters(recurse=False):
        if not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"layer {name!r} has NaN or Inf values in its {pname}; fix or retrain the weights before compiling")


def describe_layer(name: str, module: nn.Module, out_shape, batch: int, pattern: Pattern, excluded: str | None,
                   uses: int = 1) -> LayerInfo:
    """The LayerInfo of one Conv2d/Linear, with the decision of :mod:`crisp.ir.prunable` and its reason."""
    return describe_module(name, module, pattern.block, out_shape=out_shape, batch=batch, excluded=excluded, uses=uses)


class FindPrunableLayers(CrispPass):
    needs = ("shapes",)
    adds = ("layers",)

    def __init__(self, pattern: Pattern, exclude: tuple[str, ...] = ()):
        self.pattern = pattern
        self.exclude = tuple(exclude)

    def _excluded_by(self, name: str) -> str | None:
        return excluded_by((name, f"{name}.weight"), self.exclude)

    def call(self, graph_module: fx.GraphModule) -> bool:
        modules = dict(graph_module.named_modules())
        placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
        first = placeholders[0].meta.get("tensor_meta") if placeholders else None
        batch = int(first.shape[0]) if first is not None and len(first.shape) else 1
        calls: dict[str, int] = {}
        for node in graph_module.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        layers = {t: modules[t] for t in calls if type(modules[t]) in (nn.Conv2d, nn.Linear)}
        uses = weight_uses(layers, calls)
        opaque: list[LayerInfo] = []
        for node in graph_module.graph.nodes:
            if node.op != "call_module":
                continue
            module = modules[node.target]
            if isinstance(module, (nn.Conv2d, nn.Linear)) and type(module) in (nn.Conv2d, nn.Linear):
                _check_finite(node.target, module)
                meta = node.meta.get("tensor_meta")
                node.meta[META_KEY] = describe_layer(node.target, module, getattr(meta, "shape", None), batch, self.pattern,
                                                     self._excluded_by(node.target), uses[node.target])
            else:  # an opaque module: record the layers hidden inside it
                for sub, child in module.named_modules():
                    if isinstance(child, (nn.Conv2d, nn.Linear)):
                        full = f"{node.target}.{sub}" if sub else node.target
                        _check_finite(full, child)
                        excluded = self._excluded_by(full) or node.target
                        info = describe_layer(full, child, None, batch, self.pattern, excluded)
                        info.reason = f"inside opaque module {node.target!r} ({type(module).__name__}), which is excluded or a leaf; stays dense"
                        opaque.append(info)
        graph_module.meta["crisp_opaque_layers"] = opaque
        return False
