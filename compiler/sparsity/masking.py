"""Apply masks to a copy of a model: the masked dense model every compiled result must equal."""

from __future__ import annotations

import copy

import torch
from torch import nn

from crisp.errors import ModelError


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` in eval mode with ``param *= mask`` for every masked parameter."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"apply_masks takes a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(masks, dict):
        raise ModelError(f"masks must be a dict {{parameter name: bool tensor}}, got {type(masks).__name__}")
    masked = copy.deepcopy(model).eval()
    params = dict(masked.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise ModelError(f"mask for {name!r} names no parameter of the model")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(params[name].shape):
            got = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ModelError(f"mask for {name!r} must be a tensor of the parameter's shape {list(params[name].shape)}, "
                             f"got {got}")
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))
    return masked


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` (norm-wise; 0 when both are zero)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    num = torch.linalg.vector_norm(actual - expected)
    den = torch.linalg.vector_norm(expected)
    return float(num / den) if float(den) > 0 else float(num)
