"""FindPrunableLayers: attach a :class:`LayerInfo` to every Conv2d / Linear call and decide, by the
rule of :mod:`crisp.ir.prunable`, whether it is pruned. Every other conv-like or linear-like op
(Conv1d/3d, transposed convs, ``F.conv2d`` / ``aten.conv2d`` calls, layers inside opaque modules) is
recorded too, dense with its reason, so the report names every such layer.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from crisp.errors import ModelError
from crisp.ir.layer_info import META_KEY, LayerInfo
from crisp.ir.prunable import (
    describe_dense, describe_module, excluded_by, functional_layer_kind, layer_kind, other_layer_reason, weight_uses,
)
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
        layers = {t: modules[t] for t in calls if layer_kind(modules[t]) is not None}
        uses = weight_uses(layers, calls)
        opaque: list[LayerInfo] = []
        for node in graph_module.graph.nodes:
            if node.op == "call_function" and functional_layer_kind(node.target) is not None:
                opaque.append(_functional_layer(node, batch))
            if node.op != "call_module":
                continue
            module = modules[node.target]
            if node.target in layers:
                _check_finite(node.target, module)
                meta = node.meta.get("tensor_meta")
                node.meta[META_KEY] = describe_layer(node.target, module, getattr(meta, "shape", None), batch, self.pattern,
                                                     self._excluded_by(node.target), uses[node.target])
            elif other_layer_reason(module) is not None:
                opaque.append(_other_layer(node.target, module, node, batch))
            else:  # an opaque module: record the layers hidden inside it
                opaque.extend(self._inside_opaque(node.target, module, batch))
        graph_module.meta["crisp_opaque_layers"] = opaque
        return False

    def _inside_opaque(self, target: str, module: nn.Module, batch: int) -> list[LayerInfo]:
        out = []
        for sub, child in module.named_modules():
            if layer_kind(child) is None and other_layer_reason(child) is None:
                continue
            full = f"{target}.{sub}" if sub else target
            _check_finite(full, child)
            if layer_kind(child) is not None:
                info = describe_layer(full, child, None, batch, self.pattern, self._excluded_by(full) or target)
            else:
                info = _other_layer(full, child, None, batch)
            info.reason = f"inside opaque module {target!r} ({type(module).__name__}), which is excluded or a leaf; stays dense"
            out.append(info)
        return out


def _other_layer(name: str, module: nn.Module, node: fx.Node | None, batch: int) -> LayerInfo:
    """A conv-like/linear-like module crisp does not lower, reported dense with its reason."""
    weight = getattr(module, "weight", None)
    shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else ()
    kind = "linear" if isinstance(module, (nn.Linear, nn.Bilinear)) else "conv"
    meta = node.meta.get("tensor_meta") if node is not None else None
    return describe_dense(name, f"{name}.weight", shape, kind, other_layer_reason(module),
                          out_shape=getattr(meta, "shape", None), batch=batch, has_bias=getattr(module, "bias", None) is not None)


def _functional_layer(node: fx.Node, batch: int) -> LayerInfo:
    """A ``call_function`` convolution/linear (``F.conv2d(x, self.weight)``, ``aten.conv2d``), reported dense."""
    kind = functional_layer_kind(node.target)
    w = node.args[2] if getattr(node.target, "__name__", "").startswith("addmm") and len(node.args) > 2 else (
        node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"))
    w_meta = w.meta.get("tensor_meta") if isinstance(w, fx.Node) else None
    shape = tuple(w_meta.shape) if w_meta is not None else ()
    weight_name = w.target if isinstance(w, fx.Node) and w.op == "get_attr" else node.name
    fn = getattr(node.target, "__name__", str(node.target))
    reason = (f"functional call {fn}(...) on {weight_name!r} is not lowered (crisp prunes nn.Conv2d / nn.Linear "
              "modules: call the weight through one); stays dense")
    meta = node.meta.get("tensor_meta")
    return describe_dense(node.name, str(weight_name), shape, kind, reason, out_shape=getattr(meta, "shape", None),
                          batch=batch)
