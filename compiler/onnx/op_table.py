"""The ONNX op table of the importer: for each ONNX op type, the torch function that computes it.

:data:`OPS` maps an op type to a function called as ``fn(*inputs, **attributes)``: the node's
inputs (tensors, ``None`` for an omitted optional input) and its attributes by their ONNX names.
It covers the common CNN ops at opsets 7 to 21; :mod:`crisp.onnx.to_fx` builds the graph around it.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from crisp.errors import ModelError

OPS: dict[str, Callable[..., Any]] = {}


class OnnxImportError(ModelError):
    """An ONNX graph that crisp cannot import into torch.fx."""


def _op(*names: str):
    def add(fn):
        for name in names:
            OPS[name] = fn
        return fn

    return add


# ---------------------------------------------------------------------------------- helpers
def _ints(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def _pad_nd(x: torch.Tensor, pads: list[int], value: float = 0.0) -> torch.Tensor:
    """ONNX pads [b1, b2, ..., e1, e2, ...] over the spatial axes -> F.pad."""
    if not any(pads):
        return x
    half = len(pads) // 2
    torch_pads: list[int] = []
    for axis in reversed(range(half)):
        torch_pads += [pads[axis], pads[axis + half]]
    return F.pad(x, torch_pads, value=value)


def _auto_pads(attrs: dict, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    spatial = list(x.shape[2:])
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * len(spatial))
    return _ints(attrs.get("pads")) or [0] * (2 * len(spatial))


# ---------------------------------------------------------------------------------- ops
@_op("Conv")
def _conv(x, w, b=None, **a):
    n = w.dim() - 2
    strides = _ints(a.get("strides")) or [1] * n
    dil = _ints(a.get("dilations")) or [1] * n
    kernel = _ints(a.get("kernel_shape")) or list(w.shape[2:])
    x = _pad_nd(x, _auto_pads(a, x, kernel, strides, dil))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return conv(x, w, b, stride=strides, dilation=dil, groups=int(a.get("group", 1)))


@_op("Gemm")
def _gemm(a_, b_, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    a_ = a_.t() if transA else a_
    b_ = b_.t() if transB else b_
    y = alpha * (a_ @ b_)
    return y if c is None else y + beta * c


for _name, _fn in {"MatMul": torch.matmul, "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Pow": torch.pow,
                   "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt}.items():
    OPS[_name] = (lambda fn: lambda a, b, **_: fn(a, b))(_fn)


@_op("Div")
def _div(a, b, **_):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


for _name, _fn in {"Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Neg": torch.neg, "Sqrt": torch.sqrt,
                   "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs, "Erf": torch.erf, "Reciprocal": torch.reciprocal,
                   "Floor": torch.floor, "Ceil": torch.ceil, "Softplus": F.softplus, "Not": torch.logical_not,
                   "HardSwish": F.hardswish}.items():
    OPS[_name] = (lambda fn: lambda x, **_: fn(x))(_fn)


@_op("LeakyRelu")
def _leaky(x, alpha=0.01):
    return F.leaky_relu(x, alpha)


@_op("Elu")
def _elu(x, alpha=1.0):
    return F.elu(x, alpha)


@_op("PRelu")
def _prelu(x, slope):
    return torch.where(x >= 0, x, x * slope)


@_op("HardSigmoid")
def _hardsigmoid(x, alpha=0.2, beta=0.5):
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


@_op("Clip")
def _clip(x, lo=None, hi=None, min=None, max=None):  # noqa: A002 - ONNX attribute names
    lo = min if lo is None else lo
    hi = max if hi is None else hi
    lo = None if lo is None else (lo if isinstance(lo, torch.Tensor) else torch.tensor(lo, dtype=x.dtype))
    hi = None if hi is None else (hi if isinstance(hi, torch.Tensor) else torch.tensor(hi, dtype=x.dtype))
    return torch.clamp(x, lo, hi)


@_op("Softmax", "LogSoftmax")
def _softmax(x, axis=None, _op_type="Softmax", _opset=13):
    if axis is None:
        axis = -1 if _opset >= 13 else 1
    if _opset < 13:  # coerced to 2-D at `axis`
        shape = x.shape
        flat = x.reshape(int(np.prod(shape[:axis])) if axis else 1, -1)
        out = F.softmax(flat, -1) if _op_type == "Softmax" else F.log_softmax(flat, -1)
        return out.reshape(shape)
    return F.softmax(x, axis) if _op_type == "Softmax" else F.log_softmax(x, axis)


def _pool_args(x, a):
    kernel = _ints(a["kernel_shape"])
    n = len(kernel)
    strides = _ints(a.get("strides")) or [1] * n
    dil = _ints(a.get("dilations")) or [1] * n
    pads = _auto_pads(a, x, kernel, strides, dil)
    return kernel, strides, dil, pads


@_op("MaxPool")
def _maxpool(x, **a):
    kernel, strides, dil, pads = _pool_args(x, a)
    x = _pad_nd(x, pads, value=float("-inf"))
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return pool(x, kernel, strides, 0, dil, ceil_mode=bool(a.get("ceil_mode", 0)))


@_op("AveragePool")
def _avgpool(x, **a):
    kernel, strides, _, pads = _pool_args(x, a)
    include = bool(a.get("count_include_pad", 0))
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
    half = len(pads) // 2
    if pads[:half] == pads[half:]:
        return pool(x, kernel, strides, pads[:half], ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=include)
    padded = _pad_nd(x, pads)
    out = pool(padded, kernel, strides, 0, ceil_mode=bool(a.get("ceil_mode", 0)))
    if include:
        return out
    ones = _pad_nd(torch.ones_like(x[:1, :1]), pads)
    return out / pool(ones, kernel, strides, 0, ceil_mode=bool(a.get("ceil_mode", 0)))


@_op("GlobalAveragePool")
def _gap(x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("GlobalMaxPool")
def _gmp(x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("BatchNormalization")
def _bn(x, scale, bias, mean, var, epsilon=1e-5, **_):
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale / torch.sqrt(var + epsilon)
    return x * inv.reshape(shape) + (bias - mean * inv).reshape(shape)


@_op("Flatten")
def _flatten(x, axis=1):
    axis = axis if axis >= 0 else axis + x.dim()
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1)


@_op("Reshape")
def _reshape(x, shape, allowzero=0):
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@_op("Transpose")
def _transpose(x, perm=None):
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


@_op("Concat")
def _concat(*xs, axis):
    return torch.cat(list(xs), dim=axis)


@_op("Identity", "Dropout")
def _identity(x, *_, **__):
    return x


@_op("Shape")
def _shape(x, start=0, end=None):
    return torch.tensor(list(x.shape), dtype=torch.int64)[start:end]


@_op("Size")
def _size(x):
    return torch.tensor(x.numel(), dtype=torch.int64)


@_op("Gather")
def _gather(x, idx, axis=0):
    idx = idx.to(torch.int64)
    axis = axis if axis >= 0 else axis + x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


@_op("Unsqueeze")
def _unsqueeze(x, axes_in=None, axes=None):
    dims = _ints(axes if axes is not None else axes_in)
    rank = x.dim() + len(dims)
    for d in sorted(d if d >= 0 else d + rank for d in dims):
        x = x.unsqueeze(d)
    return x


@_op("Squeeze")
def _squeeze(x, axes_in=None, axes=None):
    dims = axes if axes is not None else axes_in
    if dims is None:
        return x.squeeze()
    for d in sorted((d if d >= 0 else d + x.dim() for d in _ints(dims)), reverse=True):
        x = x.squeeze(d)
    return x


@_op("Slice")
def _slice(x, starts=None, ends=None, axes=None, steps=None, **a):
    starts = _ints(a.get("starts", starts))
    ends = _ints(a.get("ends", ends))
    axes = _ints(a.get("axes", axes)) or list(range(len(starts)))
    steps = _ints(steps) or [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise OnnxImportError("Slice with a negative step is not supported by crisp's ONNX importer")
        size = x.shape[ax]
        s = max(0, min(size, s + size if s < 0 else s))
        e = max(0, min(size, e + size if e < 0 else e))
        index[ax] = slice(s, e, st)
    return x[tuple(index)]


@_op("Pad")
def _pad(x, pads=None, value=None, axes=None, mode="constant", **a):
    p = _ints(a.get("pads", pads))
    fill = a.get("value", 0.0 if value is None else float(value.reshape(-1)[0]) if isinstance(value, torch.Tensor) else value)
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if axes is not None:
        full = [0] * (2 * x.dim())
        ax = [d if d >= 0 else d + x.dim() for d in _ints(axes)]
        for i, d in enumerate(ax):
            full[d], full[d + x.dim()] = p[i], p[i + len(ax)]
        p = full
    torch_pads: list[int] = []
    for d in reversed(range(x.dim())):
        torch_pads += [p[d], p[d + x.dim()]]
    if mode == "constant":
        return F.pad(x, torch_pads, value=float(fill))
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _reduce(fn):
    def run(x, axes_in=None, axes=None, keepdims=1, noop_with_empty_axes=0):
        dims = _ints(axes if axes is not None else axes_in)
        if not dims:
            if noop_with_empty_axes:
                return x
            dims = list(range(x.dim()))
        return fn(x, dim=tuple(dims), keepdim=bool(keepdims))

    return run


OPS["ReduceMean"] = _reduce(torch.mean)
OPS["ReduceSum"] = _reduce(torch.sum)
OPS["ReduceMax"] = _reduce(torch.amax)
OPS["ReduceMin"] = _reduce(torch.amin)

_ONNX_TO_TORCH = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64, onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool, onnx.TensorProto.INT16: torch.int16,
}


@_op("Cast")
def _cast(x, to, **_):
    if to not in _ONNX_TO_TORCH:
        raise OnnxImportError(f"Cast to ONNX type {to} is not supported by crisp's ONNX importer")
    return x.to(_ONNX_TO_TORCH[to])


@_op("ConstantOfShape")
def _const_of_shape(shape, value=None):
    fill = torch.zeros(1) if value is None else value
    return fill.reshape(-1)[:1].expand(_ints(shape)).clone()


@_op("Expand")
def _expand(x, shape):
    dims = _ints(shape)
    target = torch.broadcast_shapes(tuple(x.shape), tuple(dims))
    return x.expand(target)


@_op("Min", "Max", "Sum", "Mean")
def _variadic(*xs, _op_type="Sum", **_):
    out = xs[0]
    for x in xs[1:]:
        out = {"Min": torch.minimum, "Max": torch.maximum}.get(_op_type, torch.add)(out, x)
    return out / len(xs) if _op_type == "Mean" else out


@_op("Split")
def _split(x, split=None, axis=0, num_outputs=None, _n_out=1, **a):
    sizes = _ints(a.get("split", split))
    if not sizes:
        parts = num_outputs or _n_out
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    return tuple(torch.split(x, sizes, dim=axis))


@_op("Where")
def _where(c, a, b):
    return torch.where(c.to(torch.bool), a, b)


@_op("Resize", "Upsample")
def _resize(x, *inputs, mode="nearest", _op_type="Resize", **a):
    mode = mode.decode() if isinstance(mode, bytes) else mode
    scales = a.get("scales")
    sizes = None
    tensors = [t for t in inputs if isinstance(t, torch.Tensor) and t.numel()]
    for t in tensors:
        if t.dtype == torch.int64:
            sizes = _ints(t)
        elif t.is_floating_point() and t.numel() == x.dim():
            scales = t.tolist()
    if mode != "nearest":
        raise OnnxImportError(f"{_op_type} with mode={mode!r} is not supported by crisp's ONNX importer")
    if sizes:
        return F.interpolate(x, size=sizes[2:], mode="nearest")
    return F.interpolate(x, scale_factor=[float(s) for s in scales[2:]], mode="nearest")
