"""Import an ONNX graph into a ``torch.fx.GraphModule`` (crisp's IR) for analyses that need
gradients, and the class-aware (Taylor) saliency of an ONNX model computed on it.

Each ONNX node becomes one ``call_function`` node of the function registered for its op type in
:data:`OPS` (the common CNN ops, at opsets 7 to 21); initializers become parameters (the ones
named in ``trainable``, so that they receive gradients) or buffers of the module, and Constant
nodes become buffers. An op outside the table fails with :class:`OnnxImportError`, naming the
node and its op type. The module runs eagerly: shape subgraphs (Shape, Gather, Concat, ...)
are evaluated on real tensors, as onnxruntime would.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from crisp.errors import ModelError
from crisp.sparsity.gemm_view import weight_to_gemm
from crisp.onnx.io import constant_node_value, default_opset

if TYPE_CHECKING:
    from crisp.onnx.weights import OnnxLayer

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


def _axes(attrs: dict, inputs: list, index: int) -> list[int] | None:
    """Axes from the attribute (old opsets) or the input ``index`` (new opsets)."""
    if "axes" in attrs:
        return _ints(attrs["axes"])
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    return None


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


@_op("MatMul")
def _matmul(a, b):
    return torch.matmul(a, b)


for _name, _fn in {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Pow": torch.pow,
                   "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt}.items():
    OPS[_name] = (lambda fn: lambda a, b, **_: fn(a, b))(_fn)


@_op("Div")
def _div(a, b, **_):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


for _name, _fn in {"Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Neg": torch.neg, "Sqrt": torch.sqrt,
                   "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs, "Erf": torch.erf, "Reciprocal": torch.reciprocal,
                   "Floor": torch.floor, "Ceil": torch.ceil, "Softplus": F.softplus, "Not": torch.logical_not}.items():
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


@_op("HardSwish")
def _hardswish(x):
    return F.hardswish(x)


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


# ---------------------------------------------------------------------------------- import
# inputs that old opsets gave as attributes and new ones as tensors: {op: (input index, name)}
_SECOND_INPUT_NAMES = {"Unsqueeze": "axes_in", "Squeeze": "axes_in", "ReduceMean": "axes_in", "ReduceSum": "axes_in",
                       "ReduceMax": "axes_in", "ReduceMin": "axes_in"}


def _attr_value(attr: onnx.AttributeProto):
    value = helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return torch.from_numpy(numpy_helper.to_array(value).copy())
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _safe(name: str, used: set[str]) -> str:
    base = "".join(c if c.isalnum() else "_" for c in name).strip("_") or "t"
    if base[0].isdigit():
        base = "t_" + base
    out, i = base, 1
    while out in used:
        out, i = f"{base}_{i}", i + 1
    used.add(out)
    return out


def onnx_to_fx(model: onnx.ModelProto, *, trainable: Iterable[str] = ()) -> torch.fx.GraphModule:
    """Import ``model``'s main graph. Initializers named in ``trainable`` become
    ``nn.Parameter``s (float32); ``gm.onnx_names`` maps each module attribute back to its ONNX name
    and ``gm.onnx_attrs`` maps ONNX initializer names to attributes."""
    graph = model.graph
    opset = default_opset(model)
    trainable = set(trainable)
    root = torch.nn.Module()
    fx_graph = torch.fx.Graph()
    used: set[str] = set()
    env: dict[str, torch.fx.Node] = {}
    onnx_names: dict[str, str] = {}
    inits = {t.name: t for t in graph.initializer}

    def attach(onnx_name: str, array: np.ndarray) -> torch.fx.Node:
        attr = _safe(onnx_name, used)
        tensor = torch.from_numpy(np.array(array, copy=True))
        if onnx_name in trainable:
            root.register_parameter(attr, torch.nn.Parameter(tensor.float()))
        else:
            root.register_buffer(attr, tensor)
        onnx_names[attr] = onnx_name
        return fx_graph.get_attr(attr)

    for inp in graph.input:
        if inp.name in inits:
            continue
        env[inp.name] = fx_graph.placeholder(_safe(inp.name, used))
    for name, tensor in inits.items():
        env[name] = attach(name, numpy_helper.to_array(tensor))

    for idx, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{idx}"
        if node.domain not in ("", "ai.onnx"):
            raise OnnxImportError(
                f"node {label!r} has op type {node.domain}::{node.op_type}, which crisp's ONNX importer does not support; "
                "use saliency='magnitude' for this model"
            )
        if node.op_type == "Constant":
            value = constant_node_value(node)
            if value is None:
                raise OnnxImportError(f"Constant node {label!r} holds no tensor value; use saliency='magnitude'")
            env[node.output[0]] = attach(node.output[0], value)
            continue
        fn = OPS.get(node.op_type)
        if fn is None:
            raise OnnxImportError(
                f"node {label!r} has op type {node.op_type!r}, which crisp's ONNX importer does not support "
                f"(supported: {', '.join(sorted(OPS))}); use saliency='magnitude' for this model"
            )
        args = []
        for name in node.input:
            if not name:
                args.append(None)
            elif name not in env:
                raise OnnxImportError(f"node {label!r} reads {name!r}, which no earlier node produces; is the graph sorted?")
            else:
                args.append(env[name])
        while args and args[-1] is None:
            args.pop()
        kwargs = {a.name: _attr_value(a) for a in node.attribute}
        for key, value in list(kwargs.items()):  # tensor attributes live in the module, not in the code
            if isinstance(value, torch.Tensor):
                kwargs[key] = attach(f"{label}_{key}", value.numpy())
        if node.op_type in _SECOND_INPUT_NAMES and len(args) > 1:
            kwargs[_SECOND_INPUT_NAMES[node.op_type]] = args.pop(1)
        if node.op_type in ("Softmax", "LogSoftmax", "Min", "Max", "Sum", "Mean", "Resize", "Upsample"):
            kwargs["_op_type"] = node.op_type
        if node.op_type in ("Softmax", "LogSoftmax"):
            kwargs["_opset"] = opset
        if node.op_type == "Split":
            kwargs["_n_out"] = len(node.output)
        if node.op_type == "Clip" and opset >= 11:
            kwargs.pop("min", None), kwargs.pop("max", None)
        call = fx_graph.call_function(fn, tuple(args), kwargs)
        call.meta["onnx_node"] = label
        call.meta["onnx_op_type"] = node.op_type
        outputs = [o for o in node.output]
        if node.op_type in ("BatchNormalization", "Dropout", "MaxPool"):
            outputs = outputs[:1]  # the training-only / index outputs are not supported
            if any(node.output[1:]) and any(o for o in node.output[1:] if _is_used(graph, o)):
                raise OnnxImportError(f"node {label!r} ({node.op_type}) uses its extra outputs, which crisp's importer does not produce")
        if node.op_type == "Split":
            for i, out in enumerate(outputs):
                if out:
                    env[out] = fx_graph.call_function(operator.getitem, (call, i))
        else:
            env[outputs[0]] = call
    results = []
    for out in graph.output:
        if out.name not in env:
            raise OnnxImportError(f"graph output {out.name!r} is produced by no node")
        results.append(env[out.name])
    fx_graph.output(results[0] if len(results) == 1 else tuple(results))
    gm = torch.fx.GraphModule(root, fx_graph, class_name="OnnxImported")
    gm.onnx_names = onnx_names
    gm.onnx_attrs = {v: k for k, v in onnx_names.items()}
    return gm


def _is_used(graph: onnx.GraphProto, name: str) -> bool:
    return any(name in n.input for n in graph.node) or any(o.name == name for o in graph.output)


# ---------------------------------------------------------------------------------- class-aware saliency
def _calibration_batches(calibration: Any, batch_size: int = 32):
    """(inputs, labels or None) batches from an array, an (inputs, labels) pair, or an iterable
    of such batches (e.g. a DataLoader)."""

    def is_array(x) -> bool:
        return isinstance(x, (np.ndarray, torch.Tensor))

    if is_array(calibration):
        x = torch.as_tensor(np.asarray(calibration) if isinstance(calibration, np.ndarray) else calibration)
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], None
        return
    if isinstance(calibration, (tuple, list)) and len(calibration) == 2 and all(is_array(c) for c in calibration) \
            and len(calibration[0]) == len(calibration[1]) and np.ndim(calibration[1]) == 1:
        x, y = (torch.as_tensor(c) for c in calibration)
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    try:
        iterator = iter(calibration)
    except TypeError:
        raise ModelError(
            "calibration must be an array of inputs, an (inputs, labels) pair of arrays or an iterable of "
            f"(inputs, labels) batches, got {type(calibration).__name__}"
        ) from None
    for item in iterator:
        if is_array(item):
            yield torch.as_tensor(item), None
        elif isinstance(item, (tuple, list)) and len(item) >= 2:
            yield torch.as_tensor(item[0]), torch.as_tensor(item[1])
        else:
            raise ModelError("each calibration batch must be an input array or an (inputs, labels) pair")


def taylor_saliency(model: onnx.ModelProto, layers: list["OnnxLayer"], calibration: Any,
                    classes: Iterable[int] | None) -> dict[str, torch.Tensor]:
    """Class-aware saliency (CRISP Eq. 1): ``|mean over batches of dL/dW * W|`` with the
    cross-entropy loss on the calibration samples of ``classes`` only (labels default to the
    model's own predictions), computed on the model imported into torch.fx. GEMM view per layer."""
    gm = onnx_to_fx(model, trainable={layer.weight_name for layer in layers})
    if sum(1 for n in gm.graph.nodes if n.op == "placeholder") != 1:
        raise ModelError("class-aware saliency on ONNX supports models with one input; use saliency='magnitude'")
    wanted = None
    if classes is not None:
        wanted = sorted({int(c) for c in classes})
        if not wanted:
            raise ModelError("classes is empty; give the user's classes or leave classes=None to use every sample")
    params = [getattr(gm, gm.onnx_attrs[layer.weight_name]) for layer in layers]
    sums = [torch.zeros_like(p) for p in params]
    batches = 0
    for x, y in _calibration_batches(calibration):
        x = x.to(torch.float32)
        if y is None:
            with torch.no_grad():
                y = _logits(gm, x).argmax(-1)
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1 or len(y) != len(x):
            raise ModelError(f"calibration labels must be integer class ids of shape [{len(x)}], got {y.dtype} {tuple(y.shape)}")
        y = y.to(torch.int64)
        if wanted is not None:
            keep = torch.isin(y, torch.tensor(wanted))
            x, y = x[keep], y[keep]
            if len(x) == 0:
                continue
        logits = _logits(gm, x)
        bad = [c for c in (wanted or []) if c >= logits.shape[1] or c < 0] or ([int(y.max())] if int(y.max()) >= logits.shape[1] else [])
        if bad:
            raise ModelError(f"class {bad[0]} is outside the model's {logits.shape[1]} outputs")
        loss = torch.nn.functional.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, params)
        for acc, g, p in zip(sums, grads, params):
            acc += g * p.detach()
        batches += 1
    if batches == 0:
        raise ModelError(f"the calibration data has no samples of classes {wanted}; give samples of the user's classes")
    return {layer.name: weight_to_gemm(layer.weight_from_onnx((acc / batches).abs().numpy())) for layer, acc in zip(layers, sums)}


def _logits(gm: torch.fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    out = gm(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.dim() != 2:
        raise ModelError(f"class-aware saliency needs [batch, classes] logits as the first output, got shape {tuple(out.shape)}")
    return out


__all__ = ["OPS", "OnnxImportError", "onnx_to_fx", "taylor_saliency"]
