"""The weight decoder ``Weight_<n>of<m>_b<B>``: the ONNX function that turns a layer's compact
values and index into its kept blocks, gather indices and block columns (and, for
``body="dense"``, the dense GEMM matrix)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from crisp.onnx.compact.body import COLS_ATTR, INT64_MAX, Body, make_function
from crisp.sparsity.pattern import Pattern

WIDTH_FLAG = {1: "", 2: "w", 4: "x"}  # bytes per stored block column


def weight_function_name(pattern: Pattern, index_bytes: int = 1) -> str:
    flag = WIDTH_FLAG[index_bytes]
    return f"Weight_{pattern.n}of{pattern.m}_b{pattern.block}{'_' + flag if flag else ''}"


def weight_function(pattern: Pattern, opset: int, index_bytes: int = 1) -> onnx.FunctionProto:
    """(values, index) -> (kept blocks ``[nbr, B, k*B]``, gather indices ``[nbr, k*B]``,
    block columns ``[nbr, k]``); ``nbr`` and ``k`` follow from the shape of ``values``."""
    b = Body()
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
        byte = b.op("Unsqueeze", [b.op("Slice", [index, split, b.ints([INT64_MAX])]), b.ints([1])])
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
    return make_function(weight_function_name(pattern, index_bytes), ["values", "index"], ["blocks", "columns", "block_cols"], b, opset)


def decode(b: Body, pattern: Pattern, index_bytes: int) -> tuple[str, str, str]:
    blocks, columns, block_cols = b.call(weight_function_name(pattern, index_bytes), ["values", "index"], 3, (COLS_ATTR,))
    return blocks, columns, block_cols


def dense_gemm_weight(b: Body, pattern: Pattern, blocks: str, block_cols: str) -> str:
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
