"""ONNX form of a hybrid-sparse layer: compact initializers, a ``crisp``-domain node, and the
model-local ONNX functions (standard ops only) that define the node.

A pruned layer is stored as two initializers, both derived from a
:class:`crisp.sparsity.hybrid_tensor.HybridSparseTensor`:

- ``<w>`` (the weight's own name, now holding the compact values): float ``[rows, <= k * (B/m) * n]``, the kept values of every GEMM row,
  kept block by kept block (:meth:`HybridSparseTensor.values_by_row`; rows and trailing groups
  that are only block padding are cut off);
- ``<w>.index``: uint8, the kept block columns ``[ceil(rows/B), k]`` (1 byte each up to 256
  block columns, else 2 or 4 bytes little-endian), followed by the N:M offsets packed
  ``ceil(log2 m)`` bits each, in the order of the values (row, kept block, group, n). One
  tensor instead of two keeps small models small: every tensor costs its name twice and a header.

Functions (a handful per model, shared by every layer of a kind; names are short because a
small model pays for every byte of them):

- ``Weight_<n>of<m>_b<B>`` (values, index; attribute ``cols`` = K) -> (kept blocks
  ``[nbr, B, k*B]`` with zeros where N:M removed a weight, gather indices ``[nbr, k*B]``, block
  columns). It reads initializers only, so onnxruntime, which inlines model-local functions,
  constant-folds it when the session is created: the file stays compact and the weight is
  decoded once.
- ``Conv1x1``, ``Conv`` (with the Conv attributes kernel_shape, strides, pads, dilations and
  ``in_channels`` on the node) and ``Gemm``: the per-inference part, in the ``crisp`` domain.
  It exploits the block sparsity: (for a convolution with a kernel, an im2col made of one
  depthwise Conv with one-hot kernels), one Gather of the kept input columns of every
  block-row, and one batched MatMul over the block-rows that multiplies the kept blocks only.
  Variant flags after ``_``: ``b`` takes a bias, ``t`` trims rows (rows % B != 0), ``a`` Gemm
  transA, ``w`` int32 block columns, ``d`` dense rebuild.

``body="dense"`` builds the other way: the function rebuilds the dense weight and calls the
standard Conv/Gemm (after constant folding this runs like the dense model; the file stays
compact). ``body="auto"`` (the optimizer's default) picks per layer with :func:`choose_body`:
gathering kept blocks pays when a layer keeps few of them, the dense op is faster otherwise.
``body="measure"`` times both forms of each layer in onnxruntime instead (:mod:`crisp.onnx.layer_timing`).
"""

from crisp.onnx.compact.body import BODIES, COLS_ATTR, DOMAIN, DOMAIN_VERSION, MIN_OPSET
from crisp.onnx.compact.cost import body_costs, choose_body, cost_reason
from crisp.onnx.compact.decoder import weight_function, weight_function_name
from crisp.onnx.compact.functions import (
    IN_CHANNELS_ATTR, ConvGeometry, FunctionSet, conv_attributes, conv_function, conv_function_name, gemm_function,
    gemm_function_name,
)
from crisp.onnx.compact.tensors import (
    CompactTensors, compact_node, compact_tensors, index_bytes_for, stored_value_columns, trims_rows,
)

__all__ = [
    "BODIES", "COLS_ATTR", "DOMAIN", "DOMAIN_VERSION", "IN_CHANNELS_ATTR", "MIN_OPSET", "CompactTensors", "ConvGeometry",
    "FunctionSet", "body_costs", "conv_attributes", "choose_body", "cost_reason", "compact_node", "compact_tensors", "conv_function", "conv_function_name",
    "gemm_function", "gemm_function_name", "index_bytes_for", "stored_value_columns", "trims_rows", "weight_function",
    "weight_function_name",
]
