"""Check that a mask obeys the hybrid pattern (used by tests, the ONNX path and users who bring
their own masks).

In the GEMM view every B x B block is either all zero or keeps exactly n of every m entries
along the reduction axis (``min(n, real entries)`` for a group cut by the K edge), and every
block-row keeps the same number of blocks, at least one.
"""

from __future__ import annotations

import torch

from crisp.sparsity.gemm_view import as_blocks, pad_to_blocks, weight_to_gemm
from crisp.sparsity.pattern import Pattern


def hybrid_violation(mask: torch.Tensor, pattern: Pattern) -> str | None:
    """None if ``mask`` (weight- or GEMM-shaped, bool) obeys ``pattern``, else what breaks it."""
    g = weight_to_gemm(mask.to(torch.bool))
    rows, cols = g.shape
    b, m, n = pattern.block, pattern.m, pattern.n
    blocks = as_blocks(pad_to_blocks(g, b, False), b)
    real = as_blocks(pad_to_blocks(torch.ones(rows, cols, dtype=torch.bool), b, False), b)
    nbr, nbc = blocks.shape[:2]
    kept = blocks.any(dim=(2, 3))
    ones = blocks.reshape(nbr, nbc, b, b // m, m).sum(-1)
    real_per_group = real.reshape(nbr, nbc, b, b // m, m).sum(-1)
    want = torch.where(kept[:, :, None, None], real_per_group.clamp(max=n), torch.zeros_like(ones))
    bad = (ones != want).nonzero()
    if bad.numel():
        br, bc, r, gi = (int(v) for v in bad[0])
        return (f"block ({br}, {bc}) row {br * b + r} group at column {bc * b + gi * m} keeps "
                f"{int(ones[br, bc, r, gi])} of {m}, expected {int(want[br, bc, r, gi])}")
    per_row = kept.sum(1)
    if int(per_row.min()) != int(per_row.max()):
        return f"block-rows keep different numbers of blocks ({int(per_row.min())}..{int(per_row.max())})"
    if int(per_row.min()) < 1:
        return "a block-row keeps no block"
    return None
