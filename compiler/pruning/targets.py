"""Which layers of an ``nn.Module`` CRISP prunes, by the rule the compiler uses.

Prunable: ``Conv2d`` with ``groups == 1`` and ``Linear``, whose reduction length ``K``
(``Cin*kh*kw`` or ``in_features``) is at least one block. Grouped/depthwise convs and layers
with ``K < block`` stay dense; :func:`find_prunable` says why for each candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from crisp.sparsity.gemm_view import gemm_shape
from crisp.sparsity.pattern import Pattern


@dataclass(frozen=True)
class PruneTarget:
    name: str  # parameter name, e.g. "conv2.weight"
    module_name: str
    kind: str  # "conv" | "linear"
    weight_shape: tuple[int, ...]
    gemm_shape: tuple[int, int]
    prunable: bool
    reason: str


def find_prunable(model: nn.Module, pattern: Pattern, exclude: tuple[str, ...] | list[str] = ()) -> list[PruneTarget]:
    """Every Conv2d/Linear layer with the decision and its reason, in module order."""
    out: list[PruneTarget] = []
    excluded = set(exclude)
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            kind = "conv"
        elif isinstance(module, nn.Linear):
            kind = "linear"
        else:
            continue
        shape = tuple(module.weight.shape)
        rows, k = gemm_shape(shape)
        name = f"{mod_name}.weight" if mod_name else "weight"
        if mod_name in excluded or name in excluded:
            ok, why = False, "excluded by the user"
        elif kind == "conv" and module.groups != 1:
            ok, why = False, f"grouped conv (groups={module.groups}) stays dense"
        elif k < pattern.block:
            ok, why = False, f"K={k} is smaller than one block ({pattern.block}); stays dense"
        else:
            ok, why = True, f"pruned as a {rows}x{k} GEMM"
        out.append(PruneTarget(name, mod_name, kind, shape, (rows, k), ok, why))
    return out
