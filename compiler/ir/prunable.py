"""The one rule that decides whether crisp prunes a layer, and why: a pure function of the layer's
geometry, read the same way by the fx path, the ONNX path and ``crisp.prune``.

Prunable: a Linear, or a 2-D convolution with one group, zero padding the same on both sides, whose
reduction K is at least one block, whose weight no other call shares and which the user did not exclude.
A subclass of ``nn.Conv2d`` / ``nn.Linear`` that keeps the parent's forward is such a layer
(:func:`layer_kind`); every other conv-like or linear-like module or call is reported dense with its reason.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from torch import nn

from crisp.ir.conv_geometry import ConvGeometry
from crisp.ir.layer_info import LayerInfo
from crisp.sparsity.gemm_view import gemm_shape

PRUNED = "pruned"


def excluded_by(names: Iterable[str], patterns: Iterable[str]) -> str | None:
    """The first of ``patterns`` that names the layer: equal to one of its ``names``, a parent module
    of it (``"layer4"`` excludes ``"layer4.0.conv1"``), or a glob (``"*.fc"``)."""
    names = [n for n in names if n]
    for pat in patterns:
        for name in names:
            if name == pat or name.startswith(pat + ".") or fnmatch.fnmatchcase(name, pat):
                return pat
    return None


def dense_reason(kind: str, weight_shape: tuple[int, ...], conv: ConvGeometry | None, block: int, *,
                 excluded: str | None = None, uses: int = 1) -> str | None:
    """Why the layer stays dense, or None when it is pruned. ``kind`` is "conv" or "linear";
    ``conv`` the geometry of a conv (None for a linear); ``uses`` how many calls share the weight."""
    if excluded is not None:
        return f"excluded by the user ({excluded!r})"
    if kind == "conv":
        if len(weight_shape) != 4:
            return f"{len(weight_shape) - 2}-D convolution (only 2-D convolutions are pruned); stays dense"
        if conv.groups != 1:
            depthwise = weight_shape[1] == 1
            return f"{'depthwise' if depthwise else 'grouped'} conv (groups={conv.groups}) stays dense"
        if conv.padding_mode != "zeros":
            return f"padding_mode={conv.padding_mode!r} is not lowered; stays dense"
        if conv.padding is None:
            return f"asymmetric padding {conv.pads} (top, left, bottom, right) is not lowered; stays dense"
    _, k = gemm_shape(weight_shape)
    if k < block:
        return f"reduction K={k} is smaller than one block ({block}); stays dense"
    if uses > 1:
        return f"weight is used by {uses} calls (shared weights); stays dense"
    return None


def decide(kind: str, weight_shape: tuple[int, ...], conv: ConvGeometry | None, block: int, *,
           excluded: str | None = None, uses: int = 1) -> tuple[bool, str]:
    """``(prunable, reason)`` by :func:`dense_reason`; the reason of a pruned layer is ``"pruned"``."""
    why = dense_reason(kind, weight_shape, conv, block, excluded=excluded, uses=uses)
    return (True, PRUNED) if why is None else (False, why)


def weight_uses(layers: Mapping[str, nn.Module], calls: Mapping[str, int] | None = None) -> dict[str, int]:
    """For each named layer, how many calls use its weight: its own calls (1 each when ``calls`` is
    None) plus those of every other layer that holds the same weight tensor."""
    holders: dict[int, list[str]] = {}
    for name, module in layers.items():
        holders.setdefault(id(module.weight), []).append(name)
    out = {}
    for names in holders.values():
        total = sum(1 if calls is None else calls.get(n, 0) for n in names)
        out.update({n: max(1, total) for n in names})
    return out


def out_positions_of(kind: str, out_shape, batch: int) -> int:
    """Output positions per sample: oh*ow of a conv, the product of the leading dims / batch of a linear."""
    if out_shape is None:
        return 0 if kind == "conv" else 1
    if kind == "conv":
        return int(out_shape[-1] * out_shape[-2])
    total = 1
    for d in out_shape[:-1]:
        total *= int(d)
    return max(1, total // batch) if batch else 1


def describe_module(name: str, module: nn.Module, block: int, *, out_shape=None, batch: int = 1,
                    excluded: str | None = None, uses: int = 1) -> LayerInfo:
    """The LayerInfo of one ``nn.Conv2d`` / ``nn.Linear``, with the decision of the rule and its reason."""
    weight_shape = tuple(module.weight.shape)
    kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
    conv = ConvGeometry.of_conv2d(module) if kind == "conv" else None
    prunable, reason = decide(kind, weight_shape, conv, block, excluded=excluded, uses=uses)
    return LayerInfo(
        name=name, kind=kind, weight_name=f"{name}.weight" if name else "weight", weight_shape=weight_shape,
        gemm_shape=gemm_shape(weight_shape), out_positions=out_positions_of(kind, out_shape, batch), batch=batch,
        prunable=prunable, reason=reason, conv=conv, has_bias=getattr(module, "bias", None) is not None,
    )


def layer_kind(module: nn.Module) -> str | None:
    """``"conv"`` / ``"linear"`` for a module crisp lowers: an ``nn.Conv2d`` / ``nn.Linear`` or a
    subclass that keeps the parent's forward; None for anything else."""
    if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward \
            and type(module)._conv_forward is nn.Conv2d._conv_forward:
        return "conv"
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return "linear"
    return None


def other_layer_reason(module: nn.Module) -> str | None:
    """Why a conv-like or linear-like module that is not lowered stays dense (None: not conv/linear-like)."""
    cls = type(module).__name__
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return f"transposed convolution ({cls}) is not lowered; stays dense"
    if isinstance(module, (nn.Conv1d, nn.Conv3d)):
        return f"{cls} ({len(module.weight.shape) - 2}-D convolution; only 2-D convolutions are pruned) stays dense"
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)):
        return f"{cls} overrides forward, so crisp cannot know what it computes; stays dense (or exclude it)"
    return None


_FUNCTIONAL = {"conv1d": "conv", "conv2d": "conv", "conv3d": "conv", "conv_transpose1d": "conv",
               "conv_transpose2d": "conv", "conv_transpose3d": "conv", "convolution": "conv",
               "_convolution": "conv", "linear": "linear", "bilinear": "linear", "addmm": "linear"}


def functional_layer_kind(target) -> str | None:
    """``"conv"`` / ``"linear"`` when an fx ``call_function`` target is a convolution or linear op
    (``F.conv2d``, ``torch.conv2d``, ``aten.conv2d.default`` ...), else None."""
    name = getattr(target, "__name__", None)
    if not isinstance(name, str):
        return None
    return _FUNCTIONAL.get(name.split(".")[0])


def describe_dense(name: str, weight_name: str, weight_shape: tuple[int, ...], kind: str, reason: str, *,
                   out_shape=None, batch: int = 1, has_bias: bool = False) -> LayerInfo:
    """The LayerInfo of a conv/linear-like layer that crisp reports but never lowers (dense, with ``reason``)."""
    positions = 1
    if out_shape is not None and kind == "conv":
        for d in tuple(out_shape)[2:]:
            positions *= int(d)
    elif kind == "linear":
        positions = out_positions_of(kind, out_shape, batch)
    return LayerInfo(
        name=name, kind=kind, weight_name=weight_name, weight_shape=tuple(weight_shape),
        gemm_shape=gemm_shape(weight_shape) if weight_shape else (0, 0), out_positions=positions, batch=batch,
        prunable=False, reason=reason, conv=None, has_bias=has_bias,
    )
