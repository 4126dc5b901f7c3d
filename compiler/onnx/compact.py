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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from crisp.sparsity.bitpack import pack_bits
from crisp.errors import CrispError
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern

if TYPE_CHECKING:
    from crisp.onnx.weights import OnnxLayer

DOMAIN = "crisp"
DOMAIN_VERSION = 1
MIN_OPSET = 13  # the bodies use Unsqueeze/ReduceSum/Slice/Pad with tensor inputs
COLS_ATTR = "cols"  # node attribute: K, the GEMM width of the layer
BODIES = ("auto", "blocks", "dense")
_INT64_MAX = int(np.iinfo(np.int64).max)


# ---------------------------------------------------------------------------------- body builder
class _Body:
    """Collects the nodes of a function body, hands out short unique value names and shares
    equal constants."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def _name(self) -> str:
        self._count += 1
        return f"t{self._count}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self._name() for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))  # no domain field: default ONNX
        return outs[0] if n_out == 1 else outs

    def rename_output(self, value: str, name: str) -> None:
        """Rename the value ``value`` to ``name`` (a function output) in its producer and users."""
        found = False
        for node in self.nodes:
            for i, out in enumerate(node.output):
                if out == value:
                    node.output[i] = name
                    found = True
            for i, inp in enumerate(node.input):
                if inp == value:
                    node.input[i] = name
        if not found:
            raise ValueError(f"no node produces {value!r}")

    def const(self, values, dtype=np.int64) -> str:
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            if array.dtype == np.int64 and array.ndim == 1:
                self._consts[key] = self.op("Constant", [], value_ints=[int(v) for v in array])
            elif array.dtype == np.int64 and array.ndim == 0:
                self._consts[key] = self.op("Constant", [], value_int=int(array))
            else:
                self._consts[key] = self.op("Constant", [], value=numpy_helper.from_array(array))
        return self._consts[key]

    def ints(self, values: list[int]) -> str:
        return self.const(list(values))

    def scalar(self, value: int) -> str:
        return self.const(value)

    def attr_int(self, name: str) -> str:
        """A scalar int64 constant whose value is the calling node's attribute ``name``."""
        attr = onnx.AttributeProto(name="value_int", ref_attr_name=name, type=onnx.AttributeProto.INT)
        out = self._name()
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(attr)
        self.nodes.append(node)
        return out

    def const_attr_ints(self, name: str) -> str:
        """A 1-D int64 constant whose value is the calling node's ints attribute ``name``."""
        attr = onnx.AttributeProto(name="value_ints", ref_attr_name=name, type=onnx.AttributeProto.INTS)
        out = self._name()
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(attr)
        self.nodes.append(node)
        return out

    def call(self, function: str, inputs: list[str], n_out: int, forward_attrs: tuple[str, ...]) -> list[str]:
        outs = [self._name() for _ in range(n_out)]
        node = helper.make_node(function, inputs, outs, domain=DOMAIN)
        for name in forward_attrs:
            node.attribute.append(onnx.AttributeProto(name=name, ref_attr_name=name, type=onnx.AttributeProto.INT))
        self.nodes.append(node)
        return outs


def _function(name: str, inputs: list[str], outputs: list[str], body: _Body, opset: int, doc: str = "",
              attrs: list[str] | None = None) -> onnx.FunctionProto:
    fn = helper.make_function(
        DOMAIN, name, inputs, outputs, body.nodes,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        attributes=attrs or [COLS_ATTR],
    )
    if doc:
        fn.doc_string = doc
    return fn


# ---------------------------------------------------------------------------------- weight decoder
_WIDTH_FLAG = {1: "", 2: "w", 4: "x"}  # bytes per stored block column


def weight_function_name(pattern: Pattern, index_bytes: int = 1) -> str:
    flag = _WIDTH_FLAG[index_bytes]
    return f"Weight_{pattern.n}of{pattern.m}_b{pattern.block}{'_' + flag if flag else ''}"


def weight_function(pattern: Pattern, opset: int, index_bytes: int = 1) -> onnx.FunctionProto:
    """(values, index) -> (kept blocks ``[nbr, B, k*B]``, gather indices ``[nbr, k*B]``,
    block columns ``[nbr, k]``); ``nbr`` and ``k`` follow from the shape of ``values``."""
    b = _Body()
    bsz, m, n = pattern.block, pattern.m, pattern.n
    groups, bits, per_block = pattern.groups_per_block, pattern.offset_bits, pattern.values_per_block_row
    # values [rows, <= k*V] -> zero-pad to [nbr*B, k*V] -> [nbr*B, k, groups, n]
    pads = b.op("Mod", [b.op("Neg", [b.op("Shape", ["values"])]), b.ints([bsz, per_block])])
    vals = b.op("Pad", ["values", b.op("Concat", [b.ints([0, 0]), pads], axis=0)])
    nk = b.op("Div", [b.op("Shape", [vals]), b.ints([bsz, per_block])])  # [nbr, k]
    vals = b.op("Reshape", [vals, b.ints([0, -1, groups, n])])
    # index bytes: block columns (little-endian, `index_bytes` each), then the packed offsets
    index = b.op("Cast", ["index"], to=TensorProto.INT64)
    split = b.op("ReduceProd", [nk], keepdims=1)
    if index_bytes > 1:
        split = b.op("Mul", [split, b.ints([index_bytes])])
    block_cols = b.op("Slice", [index, b.ints([0]), split])
    if index_bytes > 1:
        block_cols = b.op("Mul", [b.op("Reshape", [block_cols, b.ints([-1, index_bytes])]), b.ints([1 << (8 * i) for i in range(index_bytes)])])
        block_cols = b.op("ReduceSum", [block_cols, b.ints([1])], keepdims=0)
    block_cols = b.op("Reshape", [block_cols, nk])  # [nbr, k]
    if bits:  # offsets: packed bytes -> `bits`-bit integers, stored in the order of the values
        byte = b.op("Unsqueeze", [b.op("Slice", [index, split, b.ints([_INT64_MAX])]), b.ints([1])])
        if 8 % bits == 0:  # whole values per byte: value i of a byte = (byte >> i*bits) mod 2^bits
            offs = b.op("Mod", [b.op("Div", [byte, b.ints([1 << (i * bits) for i in range(8 // bits)])]), b.scalar(1 << bits)])
            offs = b.op("Reshape", [offs, b.ints([-1])])
        else:  # values cross bytes: unpack the bit stream, then weigh `bits` bits per value
            stream = b.op("Mod", [b.op("Div", [byte, b.ints([1 << i for i in range(8)])]), b.scalar(2)])
            stream = b.op("Reshape", [stream, b.ints([-1])])
            if (bsz * bits) % 8:  # the stream ends in padding bits
                count = b.op("Unsqueeze", [b.op("Size", [vals]), b.ints([0])])
                stream = b.op("Slice", [stream, b.ints([0]), b.op("Mul", [count, b.ints([bits])])])
            offs = b.op("Mul", [b.op("Reshape", [stream, b.ints([-1, bits])]), b.ints([1 << i for i in range(bits)])])
            offs = b.op("ReduceSum", [offs, b.ints([1])], keepdims=0)
        if 8 % bits == 0 and (bsz * bits) % 8:
            count = b.op("Unsqueeze", [b.op("Size", [vals]), b.ints([0])])
            offs = b.op("Slice", [offs, b.ints([0]), count])
        offs = b.op("Reshape", [offs, b.op("Shape", [vals])])
    else:  # m == 1: every value sits at position 0
        offs = b.op("Cast", [b.op("Mul", [vals, b.const(0, np.float32)])], to=TensorProto.INT64)
    zeros = b.op("ConstantOfShape", [b.op("Concat", [b.op("Slice", [b.op("Shape", [vals]), b.ints([0]), b.ints([3])]), b.ints([m])], axis=0)],
                 value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)))  # [nbr*B, k, groups, m]
    blocks = b.op("ScatterElements", [zeros, offs, vals], axis=3)
    blocks = b.op("Reshape", [b.op("Reshape", [blocks, b.ints([0, -1])]),
                              b.op("Concat", [b.op("Slice", [nk, b.ints([0]), b.ints([1])]), b.ints([bsz, -1])], axis=0)])  # [nbr, B, k*B]
    # gather indices: block column * B + (0..B-1), clamped to K-1 (padding columns hold zero weights)
    idx = b.op("Add", [b.op("Mul", [b.op("Unsqueeze", [block_cols, b.ints([2])]), b.scalar(bsz)]),
                       b.op("Range", [b.scalar(0), b.scalar(bsz), b.scalar(1)])])
    idx = b.op("Min", [b.op("Reshape", [idx, b.ints([0, -1])]), b.op("Sub", [b.attr_int(COLS_ATTR), b.scalar(1)])])
    for value, name in ((blocks, "blocks"), (idx, "columns"), (block_cols, "block_cols")):
        b.rename_output(value, name)
    return _function(weight_function_name(pattern, index_bytes), ["values", "index"], ["blocks", "columns", "block_cols"], b, opset)


def _decode(b: _Body, pattern: Pattern, index_bytes: int) -> tuple[str, str, str]:
    blocks, columns, block_cols = b.call(weight_function_name(pattern, index_bytes), ["values", "index"], 3, (COLS_ATTR,))
    return blocks, columns, block_cols


def _dense_gemm_weight(b: _Body, pattern: Pattern, blocks: str, block_cols: str) -> str:
    """Kept blocks -> the whole dense GEMM matrix ``[rows, K]`` (for ``body="dense"``)."""
    bsz = pattern.block
    nbr = b.op("Gather", [b.op("Shape", [block_cols]), b.ints([0])], axis=0)
    cols = b.op("Unsqueeze", [b.attr_int(COLS_ATTR), b.ints([0])])
    nbc = b.op("Div", [b.op("Add", [cols, b.ints([bsz - 1])]), b.ints([bsz])])
    kept = b.op("Reshape", [blocks, b.op("Concat", [nbr, b.ints([bsz, -1, bsz])], axis=0)])  # [nbr, B, k, B]
    where = b.op("Expand", [b.op("Unsqueeze", [block_cols, b.ints([1, 3])]), b.op("Shape", [kept])])  # [nbr, B, k, B]
    zeros = b.op("ConstantOfShape", [b.op("Concat", [nbr, b.ints([bsz]), nbc, b.ints([bsz])], axis=0)],
                 value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)))
    full = b.op("ScatterElements", [zeros, where, kept], axis=2)  # [nbr, B, nbc, B]
    full = b.op("Reshape", [full, b.op("Concat", [b.op("Mul", [nbr, b.ints([bsz])]), b.op("Mul", [nbc, b.ints([bsz])])], axis=0)])
    rows = b.op("Gather", [b.op("Shape", ["values"]), b.ints([0])], axis=0)
    return b.op("Slice", [full, b.ints([0, 0]), b.op("Concat", [rows, cols], axis=0), b.ints([0, 1])])


# ---------------------------------------------------------------------------------- layer functions
@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right (ONNX order)

    @property
    def pointwise(self) -> bool:
        """1x1, stride 1, no padding: the input is already the GEMM operand."""
        return self.kernel == (1, 1) and self.strides == (1, 1) and not any(self.pads)

    def attributes(self, in_channels: int) -> dict:
        """Node attributes of the general conv function (none for a pointwise conv)."""
        if self.pointwise:
            return {}
        return {"kernel_shape": list(self.kernel), "strides": list(self.strides), "pads": list(self.pads),
                "dilations": list(self.dilations), IN_CHANNELS_ATTR: int(in_channels)}


IN_CHANNELS_ATTR = "in_channels"
_CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations")


def _tail(has_bias: bool, trim_rows: bool, body: str, index_bytes: int, trans_a: bool = False) -> str:
    """Variant flags: b = takes a bias, t = trims rows (rows % B != 0), a = Gemm transA,
    w / x = 2- / 4-byte block columns (1 byte otherwise), d = rebuilds the dense weight."""
    flags = (("b" if has_bias else "") + ("t" if trim_rows and body == "blocks" else "") + ("a" if trans_a else "")
             + _WIDTH_FLAG[index_bytes] + ("d" if body == "dense" else ""))
    return f"_{flags}" if flags else ""


def conv_function_name(pointwise: bool, has_bias: bool, trim_rows: bool, body: str = "blocks", index_bytes: int = 1) -> str:
    return f"Conv{'1x1' if pointwise else ''}{_tail(has_bias, trim_rows, body, index_bytes)}"


def gemm_function_name(has_bias: bool, trim_rows: bool, trans_a: bool, body: str = "blocks", index_bytes: int = 1) -> str:
    return f"Gemm{_tail(has_bias, trim_rows, body, index_bytes, trans_a)}"


def _rows_out(b: _Body, y: str, axis: int, trim_rows: bool) -> str:
    if not trim_rows:
        return y
    rows = b.op("Gather", [b.op("Shape", ["values"]), b.ints([0])], axis=0)
    return b.op("Slice", [y, b.ints([0]), rows, b.ints([axis])])


def _conv_op(b: _Body, inputs: list[str], group_from: str | None) -> str:
    """A standard Conv whose attributes are the calling node's (by reference)."""
    out = b.op("Conv", inputs)
    node = b.nodes[-1]
    for name in _CONV_ATTRS:
        node.attribute.append(onnx.AttributeProto(name=name, ref_attr_name=name, type=onnx.AttributeProto.INTS))
    if group_from:
        node.attribute.append(onnx.AttributeProto(name="group", ref_attr_name=group_from, type=onnx.AttributeProto.INT))
    return out


def _im2col(b: _Body, kshape: str) -> tuple[str, str]:
    """The patches of every output position as ``[N, Cin*kh*kw, OH, OW]``, channel-major
    (c, i, j): a depthwise Conv with one-hot kernels (built from the node's attributes, so it
    constant-folds), which applies the node's strides, pads and dilations. Returns (patches, kh*kw)."""
    kk = b.op("ReduceProd", [kshape], keepdims=1)  # [1]
    eye = b.op("EyeLike", [b.op("ConstantOfShape", [b.op("Concat", [kk, kk], axis=0)])])  # float [kk, kk]
    eye = b.op("Reshape", [eye, b.op("Concat", [b.ints([1]), kk, b.ints([1]), kshape], axis=0)])  # [1, kk, 1, kh, kw]
    cin = b.op("Unsqueeze", [b.attr_int(IN_CHANNELS_ATTR), b.ints([0])])
    eye = b.op("Expand", [eye, b.op("Concat", [cin, kk, b.ints([1]), kshape], axis=0)])  # [Cin, kk, 1, kh, kw]
    kernel = b.op("Reshape", [eye, b.op("Concat", [b.ints([-1, 1]), kshape], axis=0)])  # [Cin*kk, 1, kh, kw]
    return _conv_op(b, ["X", kernel], IN_CHANNELS_ATTR), kk


def conv_function(pointwise: bool, pattern: Pattern, has_bias: bool, trim_rows: bool, opset: int,
                  body: str = "blocks", index_bytes: int = 1) -> onnx.FunctionProto:
    """``Y = Conv(X, W) (+ bias)`` with ``W`` held compactly; X is NCHW.

    The general function takes the Conv attributes (kernel_shape, strides, pads, dilations)
    and ``in_channels`` from its node; its im2col is one depthwise Conv with one-hot kernels
    whose output channels run (c, i, j), so the gather indices, which count in crisp's
    (i, j, c) order, are permuted once (constant-folded). A pointwise function needs no im2col.
    """
    b = _Body()
    inputs = ["X", "values", "index"] + (["bias"] if has_bias else [])
    attrs = [COLS_ATTR] + ([] if pointwise else [*_CONV_ATTRS, IN_CHANNELS_ATTR])
    name = conv_function_name(pointwise, has_bias, trim_rows, body, index_bytes)
    blocks, columns, block_cols = _decode(b, pattern, index_bytes)
    if body == "dense":
        g = _dense_gemm_weight(b, pattern, blocks, block_cols)
        if pointwise:
            w = b.op("Reshape", [g, b.ints([0, -1, 1, 1])])
            b.op("Conv", ["X", w] + (["bias"] if has_bias else []))
        else:
            kshape = b.const_attr_ints("kernel_shape")
            w = b.op("Reshape", [g, b.op("Concat", [b.ints([0]), kshape, b.ints([-1])], axis=0)])  # [rows, kh, kw, Cin]
            w = b.op("Transpose", [w], perm=[0, 3, 1, 2])
            _conv_op(b, ["X", w] + (["bias"] if has_bias else []), None)
        b.rename_output(b.nodes[-1].output[0], "Y")
        return _function(name, inputs, ["Y"], b, opset, attrs=attrs)
    if pointwise:
        col4 = "X"
    else:
        col4, kk = _im2col(b, b.const_attr_ints("kernel_shape"))
        cin = b.attr_int(IN_CHANNELS_ATTR)
        columns = b.op("Add", [b.op("Mul", [b.op("Mod", [columns, cin]), kk]), b.op("Div", [columns, cin])])
    gathered = b.op("Gather", [b.op("Reshape", [col4, b.ints([0, 0, -1])]), columns], axis=1)  # [N, nbr, k*B, P]
    out_hw = b.op("Slice", [b.op("Shape", [col4]), b.ints([2]), b.ints([4])])
    y = b.op("Reshape", [b.op("MatMul", [blocks, gathered]), b.op("Concat", [b.ints([0, -1]), out_hw], axis=0)])
    y = _rows_out(b, y, 1, trim_rows)
    if has_bias:
        y = b.op("Add", [y, b.op("Unsqueeze", ["bias", b.ints([1, 2])])])
    b.rename_output(b.nodes[-1].output[0], "Y")
    return _function(name, inputs, ["Y"], b, opset, attrs=attrs)


def gemm_function(pattern: Pattern, has_bias: bool, trim_rows: bool, trans_a: bool, opset: int, body: str = "blocks",
                  index_bytes: int = 1) -> onnx.FunctionProto:
    """``Y = X @ G^T (+ bias)`` for ``X[..., K]`` (``X^T`` when ``trans_a``) with ``G[rows, K]`` compact."""
    b = _Body()
    inputs = ["X", "values", "index"] + (["bias"] if has_bias else [])
    name = gemm_function_name(has_bias, trim_rows, trans_a, body, index_bytes)
    blocks, columns, block_cols = _decode(b, pattern, index_bytes)
    x = b.op("Transpose", ["X"], perm=[1, 0]) if trans_a else "X"
    if body == "dense":
        g = _dense_gemm_weight(b, pattern, blocks, block_cols)
        y = b.op("MatMul", [x, b.op("Transpose", [g], perm=[1, 0])])
        if has_bias:
            y = b.op("Add", [y, "bias"])
        b.rename_output(b.nodes[-1].output[0], "Y")
        return _function(name, inputs, ["Y"], b, opset)
    shape = b.op("Shape", [x])
    lead = b.op("Slice", [shape, b.ints([0]), b.ints([-1])])  # leading dims
    x2 = b.op("Reshape", [x, b.op("Concat", [b.ints([-1]), b.op("Slice", [shape, b.ints([-1]), b.ints([_INT64_MAX])])], axis=0)])
    gathered = b.op("Transpose", [b.op("Gather", [x2, columns], axis=1)], perm=[1, 0, 2])  # [nbr, M, k*B]
    y = b.op("MatMul", [gathered, b.op("Transpose", [blocks], perm=[0, 2, 1])])  # [nbr, M, B]
    y = b.op("Reshape", [b.op("Transpose", [y], perm=[1, 0, 2]), b.op("Concat", [lead, b.ints([-1])], axis=0)])
    y = _rows_out(b, y, -1, trim_rows)
    if has_bias:
        y = b.op("Add", [y, "bias"])
    b.rename_output(b.nodes[-1].output[0], "Y")
    return _function(name, inputs, ["Y"], b, opset)


# ---------------------------------------------------------------------------------- tensors & nodes
@dataclass
class CompactTensors:
    values: onnx.TensorProto  # float [rows, <= k*V]
    index: onnx.TensorProto  # uint8: block columns (little-endian), then packed offsets
    index_bytes: int  # bytes per block column (1, 2 or 4)
    metadata_nbytes: int

    def all(self) -> list[onnx.TensorProto]:
        return [self.values, self.index]


def stored_value_columns(hst: HybridSparseTensor) -> int:
    """How many values per row the file stores: ``k * (B/m) * n``, less the groups of the last
    kept block that lie wholly in the K padding when every block-row keeps the edge block."""
    p = hst.pattern
    width = hst.kept_blocks_per_row * p.values_per_block_row
    tail = hst.shape[1] % p.block
    if not tail or hst.kept_blocks_per_row == 0:
        return width
    if not bool((hst.block_cols[:, -1].to(torch.int64) == hst.num_block_cols - 1).all()):
        return width
    return width - (p.groups_per_block - -(-tail // p.m)) * p.n


def index_bytes_for(hst: HybridSparseTensor) -> int:
    """Bytes per stored block column: 1 up to 256 block columns, 2 up to 65536, else 4."""
    nbc = hst.num_block_cols
    return 1 if nbc <= 1 << 8 else 2 if nbc <= 1 << 16 else 4


def compact_tensors(hst: HybridSparseTensor, prefix: str, scale: float = 1.0) -> CompactTensors:
    """The two initializers of a compact layer (``scale`` multiplies the values, e.g. Gemm alpha).
    Rows and trailing groups that are only block padding are not stored; the weight function
    pads them back with zeros. The offsets are re-packed in the values' (row-major) order."""
    p = hst.pattern
    rows = hst.shape[0]
    width = stored_value_columns(hst)
    by_row = hst.values_by_row()
    values = by_row.reshape(-1, by_row.shape[-1])[:rows, :width].detach().cpu().numpy().astype(np.float32)
    if scale != 1.0:
        values = values * np.float32(scale)
    index_bytes = index_bytes_for(hst)
    cols = hst.block_cols.to(torch.int64).cpu().numpy()
    block_bytes = cols.astype(f"<u{index_bytes}").reshape(-1).view(np.uint8)
    offsets = hst.unpacked_offsets().permute(0, 2, 1, 3, 4)  # [nbr, B, k, groups, n], like the values
    packed = pack_bits(offsets.reshape(-1), p.offset_bits).cpu().numpy().astype(np.uint8)
    index = np.concatenate([block_bytes, packed])
    return CompactTensors(
        values=numpy_helper.from_array(np.ascontiguousarray(values), prefix),
        index=numpy_helper.from_array(index, f"{prefix}.index"),
        index_bytes=index_bytes,
        metadata_nbytes=int(index.size),
    )


def trims_rows(hst: HybridSparseTensor) -> bool:
    return hst.shape[0] % hst.pattern.block != 0


def compact_node(function: onnx.FunctionProto, name: str, x: str, tensors: CompactTensors, bias: str | None,
                 output: str, cols: int, attributes: dict | None = None) -> onnx.NodeProto:
    inputs = [x, tensors.values.name, tensors.index.name] + ([bias] if bias else [])
    return helper.make_node(function.name, inputs, [output], name=name, domain=DOMAIN, **{COLS_ATTR: int(cols)}, **(attributes or {}))


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


class FunctionSet:
    """The model-local functions one model needs, each built once. ``body`` is the default way of
    every layer ("auto" chooses per layer with :func:`choose_body`)."""

    def __init__(self, pattern: Pattern, opset: int, body: str = "blocks"):
        if body not in BODIES:
            raise ValueError(f"body must be one of {BODIES}, got {body!r}")
        self.pattern, self.opset, self.body = pattern, opset, body
        self.functions: dict[str, onnx.FunctionProto] = {}

    def _get(self, name: str, index_bytes: int, build) -> onnx.FunctionProto:
        decoder = weight_function_name(self.pattern, index_bytes)
        if decoder not in self.functions:
            self.functions[decoder] = weight_function(self.pattern, self.opset, index_bytes)
        if name not in self.functions:
            self.functions[name] = build()
        return self.functions[name]

    def _body(self, body: str | None) -> str:
        body = body or self.body
        if body == "auto":
            raise ValueError("pass the chosen body of the layer (see choose_body) when the set's body is 'auto'")
        return body

    def conv(self, geometry: ConvGeometry, has_bias: bool, trim_rows: bool, index_bytes: int = 1,
             body: str | None = None) -> onnx.FunctionProto:
        pw, body = geometry.pointwise, self._body(body)
        return self._get(conv_function_name(pw, has_bias, trim_rows, body, index_bytes), index_bytes,
                         lambda: conv_function(pw, self.pattern, has_bias, trim_rows, self.opset, body, index_bytes))

    def gemm(self, has_bias: bool, trim_rows: bool, trans_a: bool, index_bytes: int = 1,
             body: str | None = None) -> onnx.FunctionProto:
        body = self._body(body)
        return self._get(gemm_function_name(has_bias, trim_rows, trans_a, body, index_bytes), index_bytes,
                         lambda: gemm_function(self.pattern, has_bias, trim_rows, trans_a, self.opset, body, index_bytes))

    def all(self) -> list[onnx.FunctionProto]:
        # the decoders first, so that a reader meets them before the functions that call them
        return sorted(self.functions.values(), key=lambda f: not f.name.startswith("Weight_"))


# ---------------------------------------------------------------------------------- writing into a model
def _replace_initializer(model: onnx.ModelProto, tensor: onnx.TensorProto) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == tensor.name:
            model.graph.initializer[i].CopyFrom(tensor)
            return
    raise CrispError(f"internal error: initializer {tensor.name!r} disappeared")


def write_dense_layer(model: onnx.ModelProto, layer: "OnnxLayer", masked: torch.Tensor) -> None:
    """Overwrite ``layer``'s weight initializer with the masked weight (same name, shape, layout)."""
    array = layer.weight_to_onnx(masked).astype(np.float32)
    _replace_initializer(model, numpy_helper.from_array(array, layer.weight_name))


def _node_at(model: onnx.ModelProto, layer: "OnnxLayer") -> onnx.NodeProto:
    node = model.graph.node[layer.node_index]
    if node.output[0] != layer.output_name:
        raise CrispError(f"internal error: node {layer.name!r} moved")
    return node


def write_compact_layer(model: onnx.ModelProto, layer: "OnnxLayer", hst: HybridSparseTensor, functions: FunctionSet) -> None:
    """Replace ``layer``'s node (in place, same name and output) by a ``crisp`` node on the
    compact tensors of ``hst``; the values take the weight initializer's name and place."""
    trim = trims_rows(hst)
    bias_name = layer.bias_name
    tensors = compact_tensors(hst, layer.weight_name, scale=layer.alpha if layer.op_type == "Gemm" else 1.0)
    extra_inits = tensors.all()
    if layer.op_type == "Gemm" and bias_name is not None:
        bias = np.asarray(layer.extra["bias"], dtype=np.float32)
        rows = hst.shape[0]
        if layer.beta != 1.0 or bias.shape != (rows,):
            flat = np.broadcast_to(bias.reshape(-1) * np.float32(layer.beta), (rows,)).astype(np.float32)
            bias_name = f"{layer.bias_name}.crisp_bias"
            extra_inits.append(numpy_helper.from_array(np.ascontiguousarray(flat), bias_name))
    has_bias = bias_name is not None
    body = functions.body
    if body == "auto":
        body = choose_body(hst, layer.kind, layer.conv.pointwise if layer.kind == "conv" else True)
    layer.extra["body"] = body
    if layer.kind == "conv":
        fn = functions.conv(layer.conv, has_bias, trim, tensors.index_bytes, body)
        attrs = layer.conv.attributes(layer.weight_shape[1])
    else:
        fn = functions.gemm(has_bias, trim, layer.trans_a, tensors.index_bytes, body)
        attrs = None
    node = _node_at(model, layer)
    new = compact_node(fn, node.name, layer.input_name, tensors, bias_name, layer.output_name, hst.shape[1], attrs)
    node.CopyFrom(new)
    _replace_initializer(model, tensors.values)  # the compact values take the weight's name and place
    model.graph.initializer.extend(extra_inits[1:])
    layer.extra["compact_names"] = [t.name for t in tensors.all()]


def add_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    if model.ir_version < 8:  # model-local functions need IR version 8
        model.ir_version = 8


def finish_compact_model(model: onnx.ModelProto, functions: FunctionSet, layers: list["OnnxLayer"],
                         metadata: dict[str, str]) -> None:
    """After every layer is written: drop initializers nothing reads anymore (e.g. a replaced Gemm
    C), add the functions, the ``crisp`` domain and the ``crisp.*`` metadata."""
    from crisp.onnx.io import remove_unused_initializers

    remove_unused_initializers(model, {layer.bias_name for layer in layers if layer.bias_name})
    model.functions.extend(functions.all())
    add_domain(model)
    if metadata:
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
