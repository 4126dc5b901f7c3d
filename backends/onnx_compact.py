"""ONNX form of a hybrid-sparse layer: compact initializers, a ``crisp``-domain node, and the
model-local ONNX function (standard ops only) that defines the node.

A pruned layer is stored as three initializers, all derived from a
:class:`crisp.format.HybridSparseTensor`:

- ``<w>.crisp_values``: float ``[rows, k * (B/m) * n]``, the kept values of every GEMM row,
  kept block by kept block (:meth:`HybridSparseTensor.values_by_row`, edge-padding rows cut off);
- ``<w>.crisp_block_cols``: int16/int32 ``[ceil(rows/B), k]``, kept block columns per block-row;
- ``<w>.crisp_offsets``: uint8, the N:M offsets packed ``ceil(log2 m)`` bits each, in the
  format's order ``[block-row, kept block, row, group, n]``.

The function body has two parts. The *weight part* depends on initializers only: it unpacks the
offsets, scatters the values into the dense kept blocks ``[nbr, B, k*B]`` (zeros inside a block
where N:M removed a weight, nothing at all for removed blocks) and turns block columns into
gather indices. onnxruntime inlines model-local functions and constant-folds that part when the
session is created, so the file stays compact and the weight is decoded once. The *input part*
runs per inference and exploits the block sparsity: (for a convolution, an im2col made of Slice
and Concat in (kh, kw, cin) order), one Gather of the kept input columns of every block-row, and
one batched MatMul over the block-rows on the kept blocks only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crisp.format import HybridSparseTensor
from crisp.pattern import Pattern

DOMAIN = "crisp"
DOMAIN_VERSION = 1
MIN_OPSET = 13  # the function bodies use Unsqueeze/ReduceSum/Slice with tensor inputs
COLS_ATTR = "cols"  # the node attribute holding K, the GEMM width of the layer


# ---------------------------------------------------------------------------------- helpers
class _Body:
    """Collects the nodes of a function body and hands out unique value names."""

    def __init__(self, prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self._prefix = prefix
        self._count = 0

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = []
        for _ in range(n_out):
            self._count += 1
            outs.append(f"{self._prefix}{self._count}_{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def ints(self, values: list[int]) -> str:
        return self.op("Constant", [], value=numpy_helper.from_array(np.asarray(values, dtype=np.int64)))

    def scalar(self, value: int) -> str:
        return self.op("Constant", [], value=numpy_helper.from_array(np.asarray(value, dtype=np.int64)))

    def attr_int(self, name: str) -> str:
        """A scalar int64 constant whose value is the calling node's attribute ``name``."""
        attr = onnx.AttributeProto()
        attr.name = "value_int"
        attr.ref_attr_name = name
        attr.type = onnx.AttributeProto.INT
        self._count += 1
        out = f"{self._prefix}{self._count}_attr_{name}"
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(attr)
        self.nodes.append(node)
        return out


def _decode_weight(b: _Body, pattern: Pattern, values: str, block_cols: str, offsets: str, cols: str) -> tuple[str, str]:
    """Weight part of a body: returns (dense kept blocks ``[nbr, B, k*B]``, gather indices
    ``[nbr, k*B]`` int64). Every node here depends on initializers only."""
    bsz, m, n = pattern.block, pattern.m, pattern.n
    groups, bits = pattern.groups_per_block, pattern.offset_bits
    bc_shape = b.op("Shape", [block_cols])
    nbr = b.op("Gather", [bc_shape, b.ints([0])], axis=0)  # [1]
    k = b.op("Gather", [bc_shape, b.ints([1])], axis=0)  # [1]
    # values [rows, k*V] -> pad rows to nbr*B -> [nbr, B, k, groups, n]
    rows = b.op("Gather", [b.op("Shape", [values]), b.ints([0])], axis=0)
    pad_rows = b.op("Sub", [b.op("Mul", [nbr, b.ints([bsz])]), rows])
    vals = b.op("Pad", [values, b.op("Concat", [b.ints([0, 0]), pad_rows, b.ints([0])], axis=0)])
    vals = b.op("Reshape", [vals, b.op("Concat", [nbr, b.ints([bsz]), k, b.ints([groups, n])], axis=0)])
    # offsets: bytes -> bits -> ceil(log2 m)-bit integers, in order [nbr, k, B, groups, n]
    if bits:
        byte = b.op("Unsqueeze", [b.op("Cast", [offsets], to=TensorProto.INT32), b.ints([1])])
        powers = b.op("Constant", [], value=numpy_helper.from_array(np.asarray([1 << i for i in range(8)], dtype=np.int32)))
        stream = b.op("Mod", [b.op("Div", [byte, powers]), b.op("Constant", [], value=numpy_helper.from_array(np.asarray(2, dtype=np.int32)))])
        stream = b.op("Reshape", [stream, b.ints([-1])])
        count_bits = b.op("Mul", [b.op("Size", [vals]), b.scalar(bits)])
        stream = b.op("Slice", [stream, b.ints([0]), b.op("Unsqueeze", [count_bits, b.ints([0])]), b.ints([0])])
        weights = b.op("Constant", [], value=numpy_helper.from_array(np.asarray([1 << i for i in range(bits)], dtype=np.int32)))
        offs = b.op("Mul", [b.op("Reshape", [stream, b.ints([-1, bits])]), weights])
        offs = b.op("Cast", [b.op("ReduceSum", [offs, b.ints([1])], keepdims=0)], to=TensorProto.INT64)
        offs = b.op("Reshape", [offs, b.op("Concat", [nbr, k, b.ints([bsz, groups, n])], axis=0)])
        offs = b.op("Transpose", [offs], perm=[0, 2, 1, 3, 4])  # -> [nbr, B, k, groups, n]
    else:  # m == 1: every value sits at position 0
        offs = b.op("Cast", [b.op("Mul", [vals, b.op("Constant", [], value=numpy_helper.from_array(np.asarray(0, dtype=np.float32)))])], to=TensorProto.INT64)
    zeros_shape = b.op("Concat", [nbr, b.ints([bsz]), k, b.ints([groups, m])], axis=0)
    zeros = b.op("ConstantOfShape", [zeros_shape], value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)))
    dense = b.op("ScatterElements", [zeros, offs, vals], axis=4)
    dense = b.op("Reshape", [dense, b.op("Concat", [nbr, b.ints([bsz]), b.ints([-1])], axis=0)])  # [nbr, B, k*B]
    # gather indices: block column * B + (0..B-1), clamped to K-1 (padding columns hold zero weights)
    base = b.op("Mul", [b.op("Unsqueeze", [b.op("Cast", [block_cols], to=TensorProto.INT64), b.ints([2])]), b.scalar(bsz)])
    idx = b.op("Add", [base, b.op("Range", [b.scalar(0), b.scalar(bsz), b.scalar(1)])])
    idx = b.op("Reshape", [idx, b.op("Concat", [nbr, b.ints([-1])], axis=0)])
    idx = b.op("Min", [idx, b.op("Sub", [cols, b.scalar(1)])])
    return dense, idx


# ---------------------------------------------------------------------------------- functions
@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right (ONNX order)

    @property
    def tag(self) -> str:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        return f"k{kh}x{kw}_s{sh}x{sw}_d{dh}x{dw}_p{'x'.join(map(str, self.pads))}"


def _pattern_tag(pattern: Pattern) -> str:
    return f"{pattern.n}of{pattern.m}_b{pattern.block}"


def conv_function_name(geometry: ConvGeometry, pattern: Pattern, has_bias: bool, trim_rows: bool) -> str:
    return f"HybridSparseConv_{geometry.tag}_{_pattern_tag(pattern)}{'_bias' if has_bias else ''}{'_trim' if trim_rows else ''}"


def gemm_function_name(pattern: Pattern, has_bias: bool, trim_rows: bool, trans_a: bool) -> str:
    return f"HybridSparseGemm_{_pattern_tag(pattern)}{'_tA' if trans_a else ''}{'_bias' if has_bias else ''}{'_trim' if trim_rows else ''}"


def _finish(name: str, inputs: list[str], output: str, body: _Body, opset: int) -> onnx.FunctionProto:
    return helper.make_function(
        DOMAIN, name, inputs, [output], body.nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=[COLS_ATTR],
        doc_string="crisp hybrid N:M + block sparse layer; weight part constant-folds, input part gathers kept columns per block-row and runs one batched MatMul",
    )


def _rows_out(b: _Body, y: str, values: str, axis: int, trim_rows: bool) -> str:
    if not trim_rows:
        return y
    rows = b.op("Gather", [b.op("Shape", [values]), b.ints([0])], axis=0)
    return b.op("Slice", [y, b.ints([0]), rows, b.ints([axis])])


def conv_function(geometry: ConvGeometry, pattern: Pattern, has_bias: bool, trim_rows: bool, opset: int) -> onnx.FunctionProto:
    """``Y = Conv(X, W) (+ bias)`` with ``W`` held compactly; X is NCHW."""
    b = _Body("t")
    inputs = ["X", "values", "block_cols", "offsets"] + (["bias"] if has_bias else [])
    dense, idx = _decode_weight(b, pattern, "values", "block_cols", "offsets", b.attr_int(COLS_ATTR))
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.strides, geometry.dilations
    x = "X"
    if any(geometry.pads):
        t, l, bo, r = geometry.pads
        x = b.op("Pad", [x, b.ints([0, 0, t, l, 0, 0, bo, r])])
    patches = []
    for i in range(kh):
        for j in range(kw):
            if (kh, kw, sh, sw) == (1, 1, 1, 1):
                patches.append(x)
                continue
            ends = [-dh * (kh - 1 - i) or np.iinfo(np.int64).max, -dw * (kw - 1 - j) or np.iinfo(np.int64).max]
            patches.append(b.op("Slice", [x, b.ints([i * dh, j * dw]), b.ints(ends), b.ints([2, 3]), b.ints([sh, sw])]))
    col4 = patches[0] if len(patches) == 1 else b.op("Concat", patches, axis=1)  # [N, kh*kw*Cin, OH, OW]
    col = b.op("Reshape", [col4, b.ints([0, 0, -1])])  # [N, K, P]
    gathered = b.op("Gather", [col, idx], axis=1)  # [N, nbr, k*B, P]
    y = b.op("MatMul", [dense, gathered])  # [N, nbr, B, P]
    out_hw = b.op("Gather", [b.op("Shape", [col4]), b.ints([2, 3])], axis=0)
    y = b.op("Reshape", [y, b.op("Concat", [b.ints([0, -1]), out_hw], axis=0)])  # [N, nbr*B, OH, OW]
    y = _rows_out(b, y, "values", 1, trim_rows)
    if has_bias:
        y = b.op("Add", [y, b.op("Reshape", ["bias", b.ints([-1, 1, 1])])])
    b.nodes.append(helper.make_node("Identity", [y], ["Y"]))
    return _finish(conv_function_name(geometry, pattern, has_bias, trim_rows), inputs, "Y", b, opset)


def gemm_function(pattern: Pattern, has_bias: bool, trim_rows: bool, trans_a: bool, opset: int) -> onnx.FunctionProto:
    """``Y = X @ G^T (+ bias)`` for ``X[..., K]`` (``X^T`` when ``trans_a``) with ``G[rows, K]`` compact."""
    b = _Body("t")
    inputs = ["X", "values", "block_cols", "offsets"] + (["bias"] if has_bias else [])
    dense, idx = _decode_weight(b, pattern, "values", "block_cols", "offsets", b.attr_int(COLS_ATTR))
    dense_t = b.op("Transpose", [dense], perm=[0, 2, 1])  # [nbr, k*B, B]
    x = b.op("Transpose", ["X"], perm=[1, 0]) if trans_a else "X"
    lead = b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([-1])])  # leading dims
    x2 = b.op("Reshape", [x, b.op("Concat", [b.ints([-1]), b.op("Slice", [b.op("Shape", [x]), b.ints([-1]), b.ints([np.iinfo(np.int64).max])])], axis=0)])
    gathered = b.op("Transpose", [b.op("Gather", [x2, idx], axis=1)], perm=[1, 0, 2])  # [nbr, M, k*B]
    y = b.op("Transpose", [b.op("MatMul", [gathered, dense_t])], perm=[1, 0, 2])  # [M, nbr, B]
    y = b.op("Reshape", [y, b.op("Concat", [lead, b.ints([-1])], axis=0)])
    y = _rows_out(b, y, "values", -1, trim_rows)
    if has_bias:
        y = b.op("Add", [y, "bias"])
    b.nodes.append(helper.make_node("Identity", [y], ["Y"]))
    return _finish(gemm_function_name(pattern, has_bias, trim_rows, trans_a), inputs, "Y", b, opset)


# ---------------------------------------------------------------------------------- tensors & nodes
@dataclass
class CompactTensors:
    values: onnx.TensorProto
    block_cols: onnx.TensorProto
    offsets: onnx.TensorProto

    def all(self) -> list[onnx.TensorProto]:
        return [self.values, self.block_cols, self.offsets]

    @property
    def nbytes(self) -> int:
        return sum(len(t.raw_data) for t in self.all())

    @property
    def metadata_nbytes(self) -> int:
        return len(self.block_cols.raw_data) + len(self.offsets.raw_data)


def compact_tensors(hst: HybridSparseTensor, prefix: str, scale: float = 1.0) -> CompactTensors:
    """The three initializers of a compact layer (``scale`` multiplies the values, e.g. Gemm alpha)."""
    rows = hst.shape[0]
    by_row = hst.values_by_row()
    values = by_row.reshape(-1, by_row.shape[-1])[:rows].detach().cpu().numpy().astype(np.float32)
    if scale != 1.0:
        values = values * np.float32(scale)
    return CompactTensors(
        values=numpy_helper.from_array(np.ascontiguousarray(values), f"{prefix}.crisp_values"),
        block_cols=numpy_helper.from_array(hst.block_cols.cpu().numpy(), f"{prefix}.crisp_block_cols"),
        offsets=numpy_helper.from_array(hst.offsets.cpu().numpy(), f"{prefix}.crisp_offsets"),
    )


def trims_rows(hst: HybridSparseTensor) -> bool:
    return hst.shape[0] % hst.pattern.block != 0


def compact_node(
    function: onnx.FunctionProto,
    name: str,
    x: str,
    tensors: CompactTensors,
    bias: str | None,
    output: str,
    cols: int,
) -> onnx.NodeProto:
    inputs = [x, tensors.values.name, tensors.block_cols.name, tensors.offsets.name] + ([bias] if bias else [])
    return helper.make_node(function.name, inputs, [output], name=name, domain=DOMAIN, **{COLS_ATTR: int(cols)})
