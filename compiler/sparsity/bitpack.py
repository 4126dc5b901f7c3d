"""Pack small unsigned integers (N:M offsets) into a uint8 bit stream and back.

Little-endian within each byte: value ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of the
stream. With ``bits=2`` (M = 4) four offsets share one byte.
"""

from __future__ import annotations

import torch


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a flat tensor of integers in ``[0, 2**bits)`` into ``ceil(len*bits/8)`` bytes."""
    flat = values.reshape(-1).to(torch.int64)
    if bits == 0:
        return torch.zeros(0, dtype=torch.uint8)
    shifts = torch.arange(bits, dtype=torch.int64)
    stream = ((flat.unsqueeze(1) >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.int64)
    return (stream.reshape(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` integers as int64."""
    if bits == 0:
        return torch.zeros(count, dtype=torch.int64)
    shifts = torch.arange(8, dtype=torch.int64)
    stream = ((packed.to(torch.int64).unsqueeze(1) >> shifts) & 1).reshape(-1)[: count * bits]
    weights = torch.tensor([1 << i for i in range(bits)], dtype=torch.int64)
    return (stream.reshape(count, bits) * weights).sum(1)
