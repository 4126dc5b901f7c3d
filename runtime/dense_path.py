"""The dense path of the cpu target: torch's own conv / linear (oneDNN) on a layer's whole weight,
with the epilogue the fast kernels fuse (bias, residual add, clamp) applied in place."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def _epilogue(y: torch.Tensor, residual: Optional[torch.Tensor], clamp_min: float, clamp_max: float) -> torch.Tensor:
    if residual is not None:
        y = y.add_(residual)
    if clamp_min > -math.inf or clamp_max < math.inf:
        y = y.clamp_(None if clamp_min == -math.inf else clamp_min, None if clamp_max == math.inf else clamp_max)
    return y


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
           stride: list[int], padding: list[int], dilation: list[int], clamp_min: float, clamp_max: float) -> torch.Tensor:
    """``clamp(conv2d(x, weight, bias) + residual)``, groups=1; channels-last in and out."""
    x = x.contiguous(memory_format=torch.channels_last)
    dilation = unit_dilation_where_kernel_is_one(weight.shape[2:], dilation)
    return _epilogue(F.conv2d(x, weight, bias, stride, padding, dilation), residual, clamp_min, clamp_max)


def unit_dilation_where_kernel_is_one(kernel_size, dilation: list[int]) -> list[int]:
    """The same conv with dilation 1 on every axis whose kernel size is 1 (where dilation does
    nothing). torch 2.13's oneDNN conv crashes the process on a channels-last input with a bias and
    dilation > 1 on a size-1 kernel axis (e.g. input width 1, kernel width 1, padding 2, dilation 2,
    stride 3); this form never reaches that case."""
    dilation = list(dilation) if len(dilation) == len(kernel_size) else list(dilation) * len(kernel_size)
    return [1 if k == 1 else d for k, d in zip(kernel_size, dilation)]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], clamp_min: float,
           clamp_max: float) -> torch.Tensor:
    """``clamp(x @ weight.T + bias)``."""
    return _epilogue(F.linear(x, weight, bias), None, clamp_min, clamp_max)
