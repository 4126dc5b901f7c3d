"""FindPrunableLayers: attach a :class:`LayerInfo` to every Conv2d / Linear call and decide,
with a reason, whether it is pruned.

Prunable: Conv2d with groups=1 and zero padding (any kernel, stride, dilation) and Linear,
whose reduction K is at least one block and whose name is not excluded. Layers inside opaque
(excluded) modules are recorded too, so the report can say why they stayed dense.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from crisp.errors import ModelError
from crisp.sparsity.gemm_view import gemm_shape
from crisp.ir.layer_info import META_KEY, LayerInfo
from crisp.sparsity.pattern import Pattern

from crisp.passes.base import CrispPass


def _conv_params(conv: nn.Conv2d) -> dict:
    return {
        "kernel_size": tuple(conv.kernel_size), "stride": tuple(conv.stride), "padding": conv.padding,
        "dilation": tuple(conv.dilation), "groups": conv.groups, "padding_mode": conv.padding_mode,
    }


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Padding as (ph, pw) integers, or None when unfold cannot express it (asymmetric 'same')."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in totals):
            return None
        return tuple(t // 2 for t in totals)
    return tuple(conv.padding)


def _check_finite(name: str, module: nn.Module) -> None:
    for pname, tensor in module.named_parameters(recurse=False):
        if not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"layer {name!r} has NaN or Inf values in its {pname}; fix or retrain the weights before compiling")


def describe_layer(name: str, module: nn.Module, out_shape, batch: int, pattern: Pattern, excluded: str | None) -> LayerInfo:
    """The LayerInfo of one Conv2d/Linear, with the pruning decision and its reason."""
    weight = module.weight
    rows, k = gemm_shape(weight.shape)
    conv = {}
    if isinstance(module, nn.Conv2d):
        kind = "conv"
        conv = _conv_params(module)
        positions = int(out_shape[-1] * out_shape[-2]) if out_shape is not None else 0
    else:
        kind = "linear"
        positions = 1
        if out_shape is not None and batch:
            total = 1
            for d in out_shape[:-1]:
                total *= int(d)
            positions = max(1, total // batch)
    reason, prunable = "pruned", True
    if excluded is not None:
        reason, prunable = (f"excluded by the user ({excluded!r})", False)
    elif kind == "conv" and module.groups != 1:
        dw = module.groups == module.in_channels
        reason, prunable = (f"{'depthwise' if dw else 'grouped'} conv (groups={module.groups}) stays dense", False)
    elif kind == "conv" and module.padding_mode != "zeros":
        reason, prunable = (f"padding_mode={module.padding_mode!r} is not lowered; stays dense", False)
    elif kind == "conv" and _explicit_padding(module) is None:
        reason, prunable = ("asymmetric 'same' padding is not lowered; stays dense", False)
    elif k < pattern.block:
        reason, prunable = (f"reduction K={k} is smaller than one block ({pattern.block}); stays dense", False)
    if kind == "conv":
        conv["explicit_padding"] = _explicit_padding(module)
    return LayerInfo(
        name=name, kind=kind, weight_name=f"{name}.weight", weight_shape=tuple(weight.shape),
        gemm_shape=(rows, k), out_positions=positions, batch=batch, prunable=prunable, reason=reason,
        conv=conv, has_bias=getattr(module, "bias", None) is not None,
    )


class FindPrunableLayers(CrispPass):
    needs = ("shapes",)
    adds = ("layers",)

    def __init__(self, pattern: Pattern, exclude: tuple[str, ...] = ()):
        self.pattern = pattern
        self.exclude = tuple(exclude)

    def _excluded_by(self, name: str) -> str | None:
        for ex in self.exclude:
            if name == ex or name.startswith(ex + "."):
                return ex
        return None

    def call(self, graph_module: fx.GraphModule) -> bool:
        modules = dict(graph_module.named_modules())
        placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
        first = placeholders[0].meta.get("tensor_meta") if placeholders else None
        batch = int(first.shape[0]) if first is not None and len(first.shape) else 1
        calls: dict[str, int] = {}
        for node in graph_module.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        opaque: list[LayerInfo] = []
        for node in graph_module.graph.nodes:
            if node.op != "call_module":
                continue
            module = modules[node.target]
            if isinstance(module, (nn.Conv2d, nn.Linear)) and type(module) in (nn.Conv2d, nn.Linear):
                _check_finite(node.target, module)
                meta = node.meta.get("tensor_meta")
                info = describe_layer(node.target, module, getattr(meta, "shape", None), batch, self.pattern, self._excluded_by(node.target))
                if info.prunable and calls[node.target] > 1:
                    info.prunable, info.reason = False, f"module is called {calls[node.target]} times (shared weights); stays dense"
                node.meta[META_KEY] = info
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
