"""The ``crisp::hybrid_sparse_gemm`` custom op that lowered graphs call.

Arguments are the compact tensors of a :class:`crisp.sparsity.hybrid_tensor.HybridSparseTensor` plus the GEMM
shape and pattern as integers, so the op is a plain graph node that traces and exports. The CPU
implementation is the reference kernel; the fake (meta) kernel only computes the output shape.
"""

from typing import Optional

import torch

from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern

from crisp.runtime.reference_kernel import reference_hybrid_sparse_gemm


def compact_from_args(values, block_cols, offsets, rows, cols, n, m, block) -> HybridSparseTensor:
    """Rebuild the compact tensor from the op's arguments."""
    return HybridSparseTensor(values, block_cols, offsets, (rows, cols), Pattern(n, m, block))


@torch.library.custom_op("crisp::hybrid_sparse_gemm", mutates_args=())
def hybrid_sparse_gemm(
    x: torch.Tensor,
    values: torch.Tensor,
    block_cols: torch.Tensor,
    offsets: torch.Tensor,
    bias: Optional[torch.Tensor],
    rows: int,
    cols: int,
    n: int,
    m: int,
    block: int,
) -> torch.Tensor:
    """``x[..., cols] @ G.T + bias`` with ``G[rows, cols]`` stored in the hybrid compact format."""
    weight = compact_from_args(values, block_cols, offsets, rows, cols, n, m, block)
    return reference_hybrid_sparse_gemm(x, weight, bias)


HYBRID_SPARSE_GEMM = torch.ops.crisp.hybrid_sparse_gemm.default  # the overload lowered graphs call (node.target)


@hybrid_sparse_gemm.register_fake
def _(x, values, block_cols, offsets, bias, rows, cols, n, m, block):
    torch._check(x.shape[-1] == cols, lambda: f"hybrid_sparse_gemm expects {cols} input features, got {x.shape[-1]}")
    return x.new_empty((*x.shape[:-1], rows))


def call_hybrid_sparse_gemm(x: torch.Tensor, weight: HybridSparseTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Call the op with a compact tensor (convenience for tests and kernels)."""
    p = weight.pattern
    return torch.ops.crisp.hybrid_sparse_gemm(
        x, weight.values, weight.block_cols, weight.offsets, bias, weight.shape[0], weight.shape[1], p.n, p.m, p.block
    )
