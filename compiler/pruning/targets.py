"""Which layers of an ``nn.Module`` ``crisp.prune`` prunes: every Conv2d/Linear described as a
:class:`~crisp.ir.layer_info.LayerInfo` and decided by the compiler's rule (:mod:`crisp.ir.prunable`).

With example inputs, one forward pass counts how often each layer is called (a layer called twice
shares its weight and stays dense, as in ``crisp.compile``) and records its output positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from crisp.errors import ModelError, PatternError
from crisp.ir.layer_info import LayerInfo
from crisp.ir.layer_outputs import layer_outputs
from crisp.ir.prunable import describe_module, excluded_by, layer_kind, weight_uses
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.selection import select_hybrid_masks

PruneTarget = LayerInfo  # the record find_prunable returns: ``name`` is the module, ``weight_name`` the parameter


def _is_layer(module: nn.Module) -> bool:
    return layer_kind(module) is not None


def _run_once(model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor) -> tuple[dict[str, int], dict[str, tuple]]:
    """Calls and last output shape of each layer in one eval-mode, no-grad forward pass (model unchanged)."""
    was_training = model.training
    model.eval()
    try:
        return layer_outputs(model, example, layers=layers)
    finally:
        model.train(was_training)


def find_prunable(model: nn.Module, pattern: Pattern, exclude: Sequence[str] = (),
                  example_inputs: torch.Tensor | None = None) -> list[LayerInfo]:
    """Every Conv2d/Linear layer with the decision and its reason, in module order."""
    layers = {name: m for name, m in model.named_modules() if _is_layer(m)}
    calls, shapes, batch = None, {}, 1
    if example_inputs is not None:
        calls, shapes = _run_once(model, layers, example_inputs)
        batch = int(example_inputs.shape[0]) if example_inputs.dim() else 1
    uses = weight_uses(layers, calls)
    return [
        describe_module(name, module, pattern.block, out_shape=shapes.get(name), batch=batch,
                        excluded=excluded_by((name, f"{name}.weight"), exclude), uses=uses[name])
        for name, module in layers.items()
    ]


def max_reachable_sparsity(targets: list[LayerInfo], pattern: Pattern) -> float:
    """The highest sparsity the pattern reaches on these layers keeping one block per block-row."""
    ones = {t.weight_name: torch.ones(t.gemm_shape) for t in targets}
    return select_hybrid_masks(ones, pattern, 0.999999).achieved_sparsity


def checked_targets(model: nn.Module, pattern: Pattern, sparsity: float, exclude: Sequence[str] = (),
                    example_inputs: torch.Tensor | None = None) -> list[LayerInfo]:
    """:func:`find_prunable`, raising when no layer is prunable or ``sparsity`` is out of the pattern's reach."""
    targets = find_prunable(model, pattern, exclude, example_inputs)
    pruned = [t for t in targets if t.prunable]
    if not pruned:
        reasons = "; ".join(f"{t.name}: {t.reason}" for t in targets) or "no Conv2d or Linear layers"
        raise ModelError(f"no layer can be pruned with {pattern} ({reasons})")
    reachable = max_reachable_sparsity(pruned, pattern)
    if sparsity > reachable + 0.005:
        raise PatternError(
            f"sparsity {sparsity:g} is unreachable with {pattern}: keeping one block per block-row, "
            f"the prunable layers ({', '.join(t.name for t in pruned)}) reach at most "
            f"{reachable:.4f}; lower sparsity or use a smaller block"
        )
    return targets
