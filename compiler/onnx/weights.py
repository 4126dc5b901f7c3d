"""Find the prunable layers of an ONNX graph and map their weights to crisp's GEMM view.

A candidate is a ``Conv`` (2-D, one group), a ``Gemm`` whose ``B`` operand is constant, or a
``MatMul`` whose second operand is a constant 2-D matrix. Every candidate is reported with a
reason; those that cannot be pruned (depthwise conv, weight computed from an input, weight shared
by several nodes, ...) stay exactly as they are.

The GEMM view is the one of :mod:`crisp.sparsity.gemm_view`: rows are output channels/features and
``K`` runs over (kh, kw, cin) with input channels fastest. ONNX stores a MatMul weight and a
``Gemm`` weight with ``transB=0`` as ``[K, rows]``; those are transposed here.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper

from crisp.onnx.compact import ConvGeometry
from crisp.sparsity.gemm_view import gemm_shape, gemm_to_weight, weight_to_gemm
from crisp.onnx.io import fold_constant_tensors, replace_with_initializers, skeleton

PRUNABLE_DTYPES = (np.float32,)


@dataclass
class OnnxLayer:
    """One candidate layer of an ONNX graph."""

    name: str  # node name (or "<op_type>_<index>" when the node has none)
    op_type: str  # "Conv", "Gemm" or "MatMul"
    kind: str  # "conv" or "linear"
    node_index: int
    input_name: str  # the activation input
    output_name: str
    weight_name: str
    weight_shape: tuple[int, ...] = ()  # torch layout: conv [Cout, Cin, kh, kw], linear [rows, K]
    weight_transposed: bool = False  # the ONNX array is [K, rows]
    bias_name: str | None = None
    prunable: bool = False
    reason: str = ""
    conv: ConvGeometry | None = None
    alpha: float = 1.0
    beta: float = 1.0
    trans_a: bool = False
    out_positions: int | None = None  # output positions per sample, when shapes are known
    extra: dict = field(default_factory=dict)

    @property
    def gemm_shape(self) -> tuple[int, int]:
        return gemm_shape(self.weight_shape)

    def weight_from_onnx(self, array: np.ndarray) -> torch.Tensor:
        """The ONNX weight array in the torch layout of ``weight_shape``."""
        array = np.ascontiguousarray(array)
        t = torch.from_numpy(array if array.flags.writeable else array.copy())
        return t.t().contiguous() if self.weight_transposed else t

    def weight_to_onnx(self, weight: torch.Tensor) -> np.ndarray:
        """Inverse of :meth:`weight_from_onnx`."""
        t = weight.t() if self.weight_transposed else weight
        return np.ascontiguousarray(t.detach().cpu().numpy())

    def gemm_view(self, array: np.ndarray) -> torch.Tensor:
        return weight_to_gemm(self.weight_from_onnx(array))

    def mask_to_onnx(self, gemm_mask: torch.Tensor) -> np.ndarray:
        return self.weight_to_onnx(gemm_to_weight(gemm_mask, self.weight_shape))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _matches(layer: OnnxLayer, patterns: tuple[str, ...]) -> str | None:
    for pat in patterns:
        for candidate in (layer.name, layer.weight_name):
            if candidate == pat or fnmatch.fnmatchcase(candidate, pat):
                return pat
    return None


def _conv_geometry(node: onnx.NodeProto, weight: np.ndarray) -> tuple[ConvGeometry | None, str]:
    a = _attrs(node)
    if weight.ndim != 4:
        return None, f"{weight.ndim - 2}-D convolution (only 2-D Conv is pruned)"
    if int(a.get("group", 1)) != 1:
        return None, f"grouped/depthwise convolution (group={a['group']}) has no dense GEMM view"
    kh, kw = (int(v) for v in a.get("kernel_shape", weight.shape[2:]))
    if (kh, kw) != tuple(weight.shape[2:]):
        return None, f"kernel_shape {kh}x{kw} disagrees with the weight shape {tuple(weight.shape)}"
    strides = tuple(int(v) for v in a.get("strides", (1, 1)))
    dilations = tuple(int(v) for v in a.get("dilations", (1, 1)))
    pads = tuple(int(v) for v in a.get("pads", (0, 0, 0, 0)))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if strides != (1, 1):
            return None, f"auto_pad={auto_pad} with stride {strides} pads by input size; re-export with explicit pads"
        totals = [d * (k - 1) for d, k in zip(dilations, (kh, kw))]
        small = [t // 2 for t in totals]
        big = [t - t // 2 for t in totals]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        pads = (begin[0], begin[1], end[0], end[1])
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        return None, "Conv attributes are not 2-D"
    return ConvGeometry((kh, kw), strides, dilations, pads), ""


def _candidates(graph: onnx.GraphProto) -> list[tuple[int, onnx.NodeProto]]:
    return [
        (idx, node) for idx, node in enumerate(graph.node)
        if node.domain in ("", "ai.onnx") and node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) >= 2
    ]


def find_layers(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> list[OnnxLayer]:
    """Every Conv/Gemm/MatMul of the main graph, with ``prunable`` and a ``reason`` filled in.

    Weights (and biases) produced by constant subgraphs are folded into initializers in
    ``model`` (in place), so that later steps read and replace them like any other initializer.
    """
    graph = model.graph
    want = set()
    for _, node in _candidates(graph):
        want.update(i for i in node.input[:3] if i)
    consts = fold_constant_tensors(model, sorted(want))
    initialized = {t.name for t in graph.initializer}
    folded = {name: value for name, value in consts.items() if name not in initialized}
    if folded:
        replace_with_initializers(model, folded)
    uses: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    return [_describe(idx, node, consts, uses, graph_inputs, graph_outputs, exclude) for idx, node in _candidates(graph)]


def _describe(idx, node, consts, uses, graph_inputs, graph_outputs, exclude) -> OnnxLayer:
    weight_name = node.input[1]
    layer = OnnxLayer(node.name or f"{node.op_type}_{idx}", node.op_type, "conv" if node.op_type == "Conv" else "linear",
                      idx, node.input[0], node.output[0], weight_name)
    weight = consts.get(weight_name)
    if weight is None:
        layer.reason = ("the constant operand is the first one (crisp prunes a constant right-hand weight)"
                        if node.input[0] in consts else "weight is computed from graph inputs, not a constant")
        return layer
    if node.input[0] in consts:
        layer.reason = "both operands are constant (nothing to run at inference)"
        return layer
    if weight.dtype.type not in PRUNABLE_DTYPES:
        layer.reason = f"weight dtype {weight.dtype} is not pruned (float32 only)"
        return layer
    if weight_name in graph_outputs or uses.get(weight_name, 0) > 1:
        layer.reason = f"weight {weight_name!r} is shared with other nodes or outputs"
        return layer
    if weight_name in graph_inputs:
        layer.reason = f"weight {weight_name!r} is also a graph input (it can be overridden at run time)"
        return layer
    a = _attrs(node)
    if node.op_type == "Conv":
        geometry, why = _conv_geometry(node, weight)
        if geometry is None:
            layer.reason = why
            return layer
        layer.conv = geometry
        layer.weight_shape = tuple(int(d) for d in weight.shape)
        layer.bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    elif node.op_type == "Gemm":
        if weight.ndim != 2:
            layer.reason = "Gemm weight is not 2-D"
            return layer
        layer.trans_a = bool(a.get("transA", 0))
        layer.weight_transposed = not bool(a.get("transB", 0))
        layer.alpha = float(a.get("alpha", 1.0))
        layer.beta = float(a.get("beta", 1.0))
        rows = weight.shape[1] if layer.weight_transposed else weight.shape[0]
        if len(node.input) > 2 and node.input[2]:
            bias = consts.get(node.input[2])
            if bias is None:
                layer.reason = "Gemm bias C is computed at run time"
                return layer
            if bias.size not in (1, rows) or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
                layer.reason = f"Gemm bias C of shape {tuple(bias.shape)} is not one value per output"
                return layer
            layer.bias_name = node.input[2]
            layer.extra["bias"] = bias
        layer.weight_shape = tuple(int(d) for d in (weight.T.shape if layer.weight_transposed else weight.shape))
    else:  # MatMul
        if weight.ndim != 2:
            layer.reason = f"MatMul weight has {weight.ndim} dimensions (only 2-D weights are pruned)"
            return layer
        layer.weight_transposed = True
        layer.weight_shape = (int(weight.shape[1]), int(weight.shape[0]))
    pat = _matches(layer, exclude)
    if pat is not None:
        layer.reason = f"excluded by the user ({pat!r})"
        return layer
    layer.prunable = True
    layer.reason = "pruned"
    layer.extra["weight"] = weight
    return layer


def set_out_positions(model: onnx.ModelProto, layers: list[OnnxLayer]) -> None:
    """Fill ``out_positions`` from ONNX shape inference where the output shape is known."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    except Exception:  # shape inference is best effort here; the report then shows no MACs
        return
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for layer in layers:
        dims = shapes.get(layer.output_name)
        if not dims:
            continue
        rest = dims[2:] if layer.kind == "conv" else dims[1:-1]
        if all(d is not None for d in rest):
            layer.out_positions = int(np.prod(rest)) if rest else 1
