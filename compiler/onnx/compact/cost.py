"""The cost model of ``body="auto"``: per layer, whether gathering the kept blocks or running the
dense op on the decoded weight is faster."""

from __future__ import annotations

from crisp.sparsity.hybrid_tensor import HybridSparseTensor

# cost model of ``body="auto"``, in multiply-accumulates of onnxruntime's dense Conv per output position
_MATMUL_EFFICIENCY = 0.6  # a batched MatMul of 32-row blocks runs at about 60 % of the dense Conv's rate
_COPY_COST = 26.0  # one float copied (gather, im2col) costs about as much as 26 dense MACs
_IM2COL_COST = 2.0  # the one-hot depthwise Conv writes each im2col float at about twice a plain copy


def choose_body(hst: HybridSparseTensor, kind: str, pointwise: bool = True) -> str:
    """``"blocks"`` when gathering the kept blocks beats the dense layer by the cost model
    (measured on this project's CPU: a layer keeping under ~1/3 of its blocks), else ``"dense"``
    (the weight is still stored compactly; the function decodes it once and runs the standard op).

    Per output position: dense costs ``rows * K``; blocks cost ``rows * k*B / 0.6`` of MatMul plus
    ``26`` per copied float: the gather (``nbr * k*B``) and, for a kernel conv, the im2col (``2 K``).
    A fully connected layer reads its weight once per row of input, so it follows the weight bytes:
    blocks whenever at most 3/4 of the blocks are kept."""
    rows, cols = hst.shape
    kb = hst.kept_blocks_per_row * hst.pattern.block
    if kind != "conv":
        return "blocks" if hst.kept_blocks_per_row <= 0.75 * hst.num_block_cols else "dense"
    blocks = rows * kb / _MATMUL_EFFICIENCY + _COPY_COST * (hst.num_block_rows * kb + (0 if pointwise else _IM2COL_COST * cols))
    return "blocks" if blocks < rows * cols else "dense"
