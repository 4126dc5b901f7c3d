"""The per-layer ONNX functions ``Conv1x1``, ``Conv`` and ``Gemm`` (with their variant flags),
the conv geometry they take from their node, and :class:`FunctionSet`, which builds each
function a model needs once."""

from __future__ import annotations

import onnx

from crisp.ir.conv_geometry import ConvGeometry
from crisp.onnx.compact.body import BODIES, COLS_ATTR, INT64_MAX, Body, make_function
from crisp.onnx.compact.decoder import WIDTH_FLAG, decode, dense_gemm_weight, weight_function, weight_function_name
from crisp.sparsity.pattern import Pattern


def conv_attributes(geometry: ConvGeometry, in_channels: int) -> dict:
    """Node attributes of the general conv function (none for a pointwise conv)."""
    if geometry.pointwise:
        return {}
    return {"kernel_shape": list(geometry.kernel), "strides": list(geometry.strides), "pads": list(geometry.pads),
            "dilations": list(geometry.dilations), IN_CHANNELS_ATTR: int(in_channels)}


IN_CHANNELS_ATTR = "in_channels"
_CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations")


def _tail(has_bias: bool, trim_rows: bool, body: str, index_bytes: int, trans_a: bool = False) -> str:
    """Variant flags: b = takes a bias, t = trims rows (rows % B != 0), a = Gemm transA,
    w / x = 2- / 4-byte block columns (1 byte otherwise), d = rebuilds the dense weight."""
    flags = (("b" if has_bias else "") + ("t" if trim_rows and body == "blocks" else "") + ("a" if trans_a else "")
             + WIDTH_FLAG[index_bytes] + ("d" if body == "dense" else ""))
    return f"_{flags}" if flags else ""


def conv_function_name(pointwise: bool, has_bias: bool, trim_rows: bool, body: str = "blocks", index_bytes: int = 1) -> str:
    return f"Conv{'1x1' if pointwise else ''}{_tail(has_bias, trim_rows, body, index_bytes)}"


def gemm_function_name(has_bias: bool, trim_rows: bool, trans_a: bool, body: str = "blocks", index_bytes: int = 1) -> str:
    return f"Gemm{_tail(has_bias, trim_rows, body, index_bytes, trans_a)}"


def _rows_out(b: Body, y: str, axis: int, trim_rows: bool) -> str:
    if not trim_rows:
        return y
    rows = b.op("Gather", [b.op("Shape", ["values"]), b.ints([0])], axis=0)
    return b.op("Slice", [y, b.ints([0]), rows, b.ints([axis])])


def _conv_op(b: Body, inputs: list[str], group_from: str | None) -> str:
    """A standard Conv whose attributes are the calling node's (by reference)."""
    out = b.op("Conv", inputs)
    node = b.nodes[-1]
    for name in _CONV_ATTRS:
        node.attribute.append(onnx.AttributeProto(name=name, ref_attr_name=name, type=onnx.AttributeProto.INTS))
    if group_from:
        node.attribute.append(onnx.AttributeProto(name="group", ref_attr_name=group_from, type=onnx.AttributeProto.INT))
    return out


def _im2col(b: Body, kshape: str) -> tuple[str, str]:
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
    b = Body()
    inputs = ["X", "values", "index"] + (["bias"] if has_bias else [])
    attrs = [COLS_ATTR] + ([] if pointwise else [*_CONV_ATTRS, IN_CHANNELS_ATTR])
    name = conv_function_name(pointwise, has_bias, trim_rows, body, index_bytes)
    blocks, columns, block_cols = decode(b, pattern, index_bytes)
    if body == "dense":
        g = dense_gemm_weight(b, pattern, blocks, block_cols)
        if pointwise:
            w = b.op("Reshape", [g, b.ints([0, -1, 1, 1])])
            b.op("Conv", ["X", w] + (["bias"] if has_bias else []))
        else:
            kshape = b.const_attr_ints("kernel_shape")
            w = b.op("Reshape", [g, b.op("Concat", [b.ints([0]), kshape, b.ints([-1])], axis=0)])  # [rows, kh, kw, Cin]
            w = b.op("Transpose", [w], perm=[0, 3, 1, 2])
            _conv_op(b, ["X", w] + (["bias"] if has_bias else []), None)
        b.rename_output(b.nodes[-1].output[0], "Y")
        return make_function(name, inputs, ["Y"], b, opset, attrs=attrs)
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
    return make_function(name, inputs, ["Y"], b, opset, attrs=attrs)


def gemm_function(pattern: Pattern, has_bias: bool, trim_rows: bool, trans_a: bool, opset: int, body: str = "blocks",
                  index_bytes: int = 1) -> onnx.FunctionProto:
    """``Y = X @ G^T (+ bias)`` for ``X[..., K]`` (``X^T`` when ``trans_a``) with ``G[rows, K]`` compact."""
    b = Body()
    inputs = ["X", "values", "index"] + (["bias"] if has_bias else [])
    name = gemm_function_name(has_bias, trim_rows, trans_a, body, index_bytes)
    blocks, columns, block_cols = decode(b, pattern, index_bytes)
    x = b.op("Transpose", ["X"], perm=[1, 0]) if trans_a else "X"
    if body == "dense":
        g = dense_gemm_weight(b, pattern, blocks, block_cols)
        y = b.op("MatMul", [x, b.op("Transpose", [g], perm=[1, 0])])
        if has_bias:
            y = b.op("Add", [y, "bias"])
        b.rename_output(b.nodes[-1].output[0], "Y")
        return make_function(name, inputs, ["Y"], b, opset)
    shape = b.op("Shape", [x])
    lead = b.op("Slice", [shape, b.ints([0]), b.ints([-1])])  # leading dims
    x2 = b.op("Reshape", [x, b.op("Concat", [b.ints([-1]), b.op("Slice", [shape, b.ints([-1]), b.ints([INT64_MAX])])], axis=0)])
    gathered = b.op("Transpose", [b.op("Gather", [x2, columns], axis=1)], perm=[1, 0, 2])  # [nbr, M, k*B]
    y = b.op("MatMul", [gathered, b.op("Transpose", [blocks], perm=[0, 2, 1])])  # [nbr, M, B]
    y = b.op("Reshape", [b.op("Transpose", [y], perm=[1, 0, 2]), b.op("Concat", [lead, b.ints([-1])], axis=0)])
    y = _rows_out(b, y, -1, trim_rows)
    if has_bias:
        y = b.op("Add", [y, "bias"])
    b.rename_output(b.nodes[-1].output[0], "Y")
    return make_function(name, inputs, ["Y"], b, opset)


class FunctionSet:
    """The model-local functions one model needs, each built once. ``body`` is the default way of
    every layer ("auto" and "measure" choose per layer: :func:`choose_body`, :mod:`crisp.onnx.layer_timing`)."""

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
        if body in ("auto", "measure"):
            raise ValueError(f"pass the chosen body of the layer (see choose_body) when the set's body is {body!r}")
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
