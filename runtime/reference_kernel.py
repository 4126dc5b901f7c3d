"""The reference CPU kernel of the hybrid-sparse GEMM: correct and readable, not fast.

``y[..., r] = sum_c x[..., c] * G[r, c] + bias[r]`` where ``G`` is held compactly. For each
block-row the kernel gathers, for every stored value, the input column it multiplies (the kept
block's columns shifted by the value's N:M offset) and reduces. It never builds the dense
weight; fast kernels are checked against it.
"""

from __future__ import annotations

import torch

from crisp.sparsity.hybrid_tensor import HybridSparseTensor


def reference_hybrid_sparse_gemm(x: torch.Tensor, weight: HybridSparseTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x[..., K] -> [..., rows]`` with the compact ``weight`` of GEMM shape ``[rows, K]``."""
    rows, cols = weight.shape
    block = weight.pattern.block
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cols)
    padded_cols = weight.num_block_cols * block
    if padded_cols != cols:
        x2 = torch.nn.functional.pad(x2, (0, padded_cols - cols))
    columns = weight.gather_columns()  # [nbr, B, V]: which input column each value multiplies
    values = weight.values_by_row().to(x.dtype)  # [nbr, B, V]
    out = x2.new_empty(x2.shape[0], weight.num_block_rows * block)
    for r in range(weight.num_block_rows):
        gathered = x2[:, columns[r]]  # [batch, B, V]: the kept inputs of every row of this block-row
        out[:, r * block:(r + 1) * block] = torch.einsum("nbv,bv->nb", gathered, values[r])
    out = out[:, :rows]
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*lead, rows)
