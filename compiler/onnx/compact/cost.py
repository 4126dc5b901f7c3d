"""The cost model of ``body="auto"``: per layer, whether gathering the kept blocks or running the
dense op on the decoded weight is faster."""

from __future__ import annotations

from crisp.sparsity.hybrid_tensor import HybridSparseTensor

# cost model of ``body="auto"``, in multiply-accumulates of onnxruntime's dense Conv per output position.
# Fitted to both forms of every pruned layer of ResNet-50, VGG-16 and MobileNetV2 (2:4, 32x32 blocks, 90 %),
# timed in onnxruntime 1.32 (MLAS, AVX-512, 2 threads) at batch 1 and 8 (crisp.onnx.layer_timing): it
# picks kept blocks exactly where they win alone at both batches on 69 of 74 layers (the old constants 0.6 / 26 /
# 2: 54; the 5 others win at batch 1 and lose by 1-31 % at batch 8), before the context term below.
_MATMUL_EFFICIENCY = 0.4  # a batched MatMul of 32-row blocks runs at about 40 % of the dense Conv's rate
_COPY_COST = 5.0  # one float gathered costs about as much as 5 dense MACs
_IM2COL_COST = 64.0  # per im2col column, x _COPY_COST: the one-hot depthwise Conv and the gather of its much larger
# output lose to the dense kxk Conv (NCHWc, im2col-free) on every measured layer
_CONTEXT_COST = 80.0  # per input and output float of a kept-blocks conv: what it costs the model around it (bias,
# activation and residual Add no longer fused into the conv, NCHWc layout changes). Measured on whole models as
# (sum of the layers' own gains) - (whole-model gain): ResNet-50 about 23 at batch 1 and 86 at batch 8, MobileNetV2
# 37 at batch 8; 80 keeps the whole model from losing at batch 8


def context_fraction(hst: HybridSparseTensor, kind: str) -> float:
    """What running a conv on kept blocks costs the model around it, as a fraction of the layer's dense
    cost (``_CONTEXT_COST`` per input and output channel over ``rows * K``); 0 for a fully connected layer."""
    if kind != "conv":
        return 0.0
    rows, cols = hst.shape
    channels = hst.weight_shape[1] if len(hst.weight_shape) == 4 else cols
    return _CONTEXT_COST * (rows + channels) / (rows * cols)


def body_costs(hst: HybridSparseTensor, kind: str, pointwise: bool = True) -> tuple[float, float]:
    """(blocks, dense) costs of one layer by the cost model, in dense-MAC equivalents per output
    position (a fully connected layer: in weight blocks read, kept vs all)."""
    rows, cols = hst.shape
    kb = hst.kept_blocks_per_row * hst.pattern.block
    if kind != "conv":
        return float(hst.kept_blocks_per_row), 0.75 * hst.num_block_cols
    blocks = rows * kb / _MATMUL_EFFICIENCY + _COPY_COST * (hst.num_block_rows * kb + (0 if pointwise else _IM2COL_COST * cols))
    return float(blocks + context_fraction(hst, kind) * rows * cols), float(rows * cols)


def choose_body(hst: HybridSparseTensor, kind: str, pointwise: bool = True) -> str:
    """``"blocks"`` when gathering the kept blocks beats the dense layer by the cost model (a 1x1
    conv keeping under ~3/8 of its blocks; a kxk conv practically never), else ``"dense"`` (the
    weight is still stored compactly; the function decodes it once and runs the standard op).

    Per output position: dense costs ``rows * K``; blocks cost ``rows * k*B / 0.4`` of MatMul plus
    ``5`` per copied float: the gather (``nbr * k*B``) and, for a kernel conv, the im2col (``64 K``).
    A fully connected layer reads its weight once per row of input, so it follows the weight bytes:
    blocks whenever at most 3/4 of the blocks are kept."""
    blocks, dense = body_costs(hst, kind, pointwise)
    return "blocks" if (blocks <= dense if kind != "conv" else blocks < dense) else "dense"


def cost_reason(hst: HybridSparseTensor, kind: str, pointwise: bool = True) -> str:
    """The cost model's numbers behind :func:`choose_body`, for the report."""
    blocks, dense = body_costs(hst, kind, pointwise)
    if kind != "conv":
        return (f"cost model: {hst.kept_blocks_per_row}/{hst.num_block_cols} blocks kept per row "
                f"(kept blocks pay up to 3/4 kept)")
    return f"cost model: kept blocks {blocks:.0f}, dense op {dense:.0f} MAC-equivalents per output position"
