"""Masking with a straight-through estimator (STE), as a ``torch.nn.utils.parametrize``
parametrization of a layer's ``weight``.

Forward: the layer computes with ``W * mask``. Backward: the *dense* gradient reaches every
entry of the latent weight ``W``, pruned ones included, so a pruned weight can grow back and
be selected again at the next pruning step (the public CRISP code zeroes these gradients;
we do not). :func:`bake_masks` removes the parametrizations and leaves ``W * mask`` in place.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class _MaskSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return weight * mask.to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None  # straight through: the dense gradient, pruned entries included


def ste_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight * mask`` whose gradient with respect to ``weight`` is the unmasked gradient."""
    return _MaskSTE.apply(weight, mask)


class STEMask(nn.Module):
    """Parametrization ``W -> W * mask`` with a straight-through gradient."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return ste_mask(weight, self.mask)


def split_name(name: str) -> tuple[str, str]:
    """``"layer1.conv.weight"`` -> (``"layer1.conv"``, ``"weight"``)."""
    module, _, attr = name.rpartition(".")
    return module, attr


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, attr = split_name(name)
    return (model.get_submodule(module_name) if module_name else model), attr


def latent_weight(model: nn.Module, name: str) -> nn.Parameter:
    """The trainable (unmasked) tensor behind parameter ``name``, parametrized or not."""
    module, attr = owner(model, name)
    if parametrize.is_parametrized(module, attr):
        return getattr(module.parametrizations, attr).original
    return getattr(module, attr)


def set_ste_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Mask each parameter in ``masks`` (bool, the parameter's shape) through an STE.

    A parameter that already carries an :class:`STEMask` gets its mask replaced in place.
    """
    for name, mask in masks.items():
        module, attr = owner(model, name)
        if parametrize.is_parametrized(module, attr):
            for p in getattr(module.parametrizations, attr):
                if isinstance(p, STEMask):
                    p.mask.copy_(mask.to(torch.bool))
                    break
            else:
                raise ValueError(f"{name} is parametrized by something other than crisp's STE mask")
        else:
            parametrize.register_parametrization(module, attr, STEMask(mask), unsafe=True)


def bake_masks(model: nn.Module, names: list[str] | None = None) -> None:
    """Remove crisp's parametrizations, leaving the masked weight as a plain parameter."""
    for mod_name, module in list(model.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        for attr in list(module.parametrizations.keys()):
            full = f"{mod_name}.{attr}" if mod_name else attr
            if names is None or full in names:
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
