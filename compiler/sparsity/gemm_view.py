"""The GEMM view of a prunable layer's weight.

A Conv2d weight ``W[Cout, Cin, kh, kw]`` is the matrix ``G[Cout, K]`` with ``K = kh*kw*Cin``
ordered ``(kh, kw, cin)``: input channels vary fastest, so an N:M group is M consecutive input
channels at one kernel position. A Linear weight is already ``G``. Every pass, the format and
the kernels use these two functions so that they agree on the order.
"""

from __future__ import annotations

import torch


def weight_to_gemm(weight: torch.Tensor) -> torch.Tensor:
    """``[Cout, Cin, kh, kw]`` or ``[out, in]`` -> ``[rows, K]`` in (kh, kw, cin) order."""
    if weight.dim() == 4:
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    if weight.dim() == 2:
        return weight
    raise ValueError(f"expected a 2-D or 4-D weight, got shape {tuple(weight.shape)}")


def gemm_to_weight(gemm: torch.Tensor, weight_shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`weight_to_gemm` for a weight of ``weight_shape``."""
    weight_shape = tuple(weight_shape)
    if len(weight_shape) == 4:
        cout, cin, kh, kw = weight_shape
        return gemm.reshape(cout, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    if len(weight_shape) == 2:
        return gemm.reshape(weight_shape)
    raise ValueError(f"expected a 2-D or 4-D weight shape, got {weight_shape}")


def gemm_shape(weight_shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """(rows, K) of the GEMM view of a weight of ``weight_shape``."""
    rows = int(weight_shape[0])
    k = 1
    for d in tuple(weight_shape)[1:]:
        k *= int(d)
    return rows, k


def blocks_along(size: int, block: int) -> int:
    """How many blocks of ``block`` cover ``size`` (the last one may be partial)."""
    return -(-size // block)


def pad_to_blocks(matrix: torch.Tensor, block: int, fill: float | bool = 0) -> torch.Tensor:
    """Pad a ``[rows, K]`` matrix with ``fill`` up to whole ``block`` x ``block`` tiles."""
    rows, cols = matrix.shape
    pr = blocks_along(rows, block) * block - rows
    pc = blocks_along(cols, block) * block - cols
    if pr == 0 and pc == 0:
        return matrix
    out = matrix.new_full((rows + pr, cols + pc), fill)
    out[:rows, :cols] = matrix
    return out


def as_blocks(padded: torch.Tensor, block: int) -> torch.Tensor:
    """``[nbr*B, nbc*B]`` -> ``[nbr, nbc, B, B]`` (block-row, block-col, row in block, col in block)."""
    rows, cols = padded.shape
    return padded.reshape(rows // block, block, cols // block, block).permute(0, 2, 1, 3)


def from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`as_blocks`."""
    nbr, nbc, b, _ = blocks.shape
    return blocks.permute(0, 2, 1, 3).reshape(nbr * b, nbc * b)
