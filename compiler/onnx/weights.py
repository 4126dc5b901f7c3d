"""Find the prunable layers of an ONNX graph and map their weights to crisp's GEMM view.

A candidate is a ``Conv``, a ``Gemm`` or a ``MatMul`` whose second operand is a constant. Each one
is described as an :class:`OnnxLayer` (crisp's layer record plus its ONNX binding) and decided by the
compiler's rule (:mod:`crisp.ir.prunable`), after the checks only a graph needs (weight constant,
float32, not a graph input); those that stay dense are left exactly as they are.

The GEMM view is the one of :mod:`crisp.sparsity.gemm_view`: rows are output channels/features and
``K`` runs over (kh, kw, cin) with input channels fastest. ONNX stores a MatMul weight and a
``Gemm`` weight with ``transB=0`` as ``[K, rows]``; those are transposed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from crisp.ir.conv_geometry import ConvGeometry, same_pads
from crisp.ir.layer_info import LayerInfo
from crisp.ir.prunable import decide, excluded_by
from crisp.onnx.io import fold_constant_tensors, overridable_inputs, replace_with_initializers, skeleton
from crisp.onnx.tidy import use_counts
from crisp.sparsity.gemm_view import gemm_shape, gemm_to_weight, weight_to_gemm

PRUNABLE_DTYPES = (np.float32, np.float16)  # fp16 weights are pruned in float32 and stored back as fp16
PAD_MODES = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}  # ONNX Pad mode -> torch padding_mode


@dataclass(eq=False)
class OnnxLayer(LayerInfo):
    """The layer record of one candidate node, plus where it lives in the ONNX graph. ``name`` is the
    node name (or ``"<op_type>_<index>"``), ``weight_name`` the weight initializer; ``out_positions``
    is 0 until shape inference knows it."""

    op_type: str = ""  # "Conv", "Gemm" or "MatMul"
    node_index: int = -1
    input_name: str = ""  # the activation input
    output_name: str = ""
    weight_transposed: bool = False  # the ONNX array is [K, rows]
    bias_name: str | None = None
    alpha: float = 1.0
    beta: float = 1.0
    trans_a: bool = False
    weight: np.ndarray | None = None  # the (folded) weight array, ONNX layout, of a prunable layer
    bias: np.ndarray | None = None  # a Gemm's constant C
    body: str | None = None  # how the compact node computes, once written
    compact_names: tuple[str, ...] = ()  # initializers of the compact node, once written
    input_dims: tuple[int | None, ...] | None = None  # the activation's shape by shape inference (None: unknown dim)
    body_reason: str = ""  # why the compact node computes as it does
    timing: Any = None  # crisp.onnx.layer_timing.LayerTiming when body="measure" timed the layer

    def weight_from_onnx(self, array: np.ndarray) -> torch.Tensor:
        """The ONNX weight array in the torch layout of ``weight_shape``."""
        array = np.ascontiguousarray(array if array.dtype == np.float32 else array.astype(np.float32))
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


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _conv_geometry(node: onnx.NodeProto, weight: np.ndarray, pad_mode: str) -> tuple[ConvGeometry | None, str]:
    """The geometry of a 2-D Conv, or None and why the node cannot be described."""
    a = _attrs(node)
    kh, kw = (int(v) for v in a.get("kernel_shape", weight.shape[2:]))
    if (kh, kw) != tuple(weight.shape[2:]):
        return None, f"kernel_shape {kh}x{kw} disagrees with the weight shape {tuple(weight.shape)}"
    strides = tuple(int(v) for v in a.get("strides", (1, 1)))
    dilations = tuple(int(v) for v in a.get("dilations", (1, 1)))
    pads = tuple(int(v) for v in a.get("pads", (0, 0, 0, 0)))
    auto_pad = _text(a.get("auto_pad", b"NOTSET"))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if strides != (1, 1):
            return None, f"auto_pad={auto_pad} with stride {strides} pads by input size; re-export with explicit pads"
        pads = same_pads((kh, kw), dilations, upper=auto_pad == "SAME_UPPER")
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        return None, "Conv attributes are not 2-D"
    return ConvGeometry((kh, kw), strides, dilations, pads, int(a.get("group", 1)), pad_mode), ""


def _candidates(graph: onnx.GraphProto) -> list[tuple[int, onnx.NodeProto]]:
    return [
        (idx, node) for idx, node in enumerate(graph.node)
        if node.domain in ("", "ai.onnx") and node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) >= 2
    ]


@dataclass(frozen=True)
class _GraphFacts:
    """What describing a node needs to know about the rest of the graph."""

    consts: dict  # name -> constant array (initializers and folded constant subgraphs)
    uses: dict  # tensor name -> how many node inputs and graph outputs read it
    graph_inputs: frozenset
    pad_modes: dict  # tensor name -> padding_mode of the non-constant Pad that produces it


def _graph_facts(model: onnx.ModelProto, consts: dict) -> _GraphFacts:
    graph = model.graph
    uses = use_counts(graph, model.functions)  # uses inside If/Loop/Scan bodies and functions count
    pad_modes = {}
    for node in graph.node:
        if node.op_type == "Pad" and node.domain in ("", "ai.onnx"):
            mode = _text(_attrs(node).get("mode", b"constant"))
            if mode != "constant":
                pad_modes[node.output[0]] = PAD_MODES.get(mode, mode)
    return _GraphFacts(consts, uses, frozenset(overridable_inputs(model)), pad_modes)


def find_layers(model: onnx.ModelProto, exclude: tuple[str, ...] = (), *, block: int) -> list[OnnxLayer]:
    """Every Conv/Gemm/MatMul of the main graph, with ``prunable`` and a ``reason`` filled in by the
    rule for blocks of ``block``.

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
    facts = _graph_facts(model, consts)
    return [_describe(idx, node, facts, tuple(exclude), block) for idx, node in _candidates(graph)]


def _unbound(node: onnx.NodeProto, facts: _GraphFacts) -> str | None:
    """Why the node's weight cannot be bound to a constant crisp may rewrite, or None."""
    weight_name, consts = node.input[1], facts.consts
    weight = consts.get(weight_name)
    if weight_name in facts.graph_inputs:
        return (f"weight {weight_name!r} is also a graph input (it can be overridden at run time); "
                "remove it from the graph inputs to let crisp prune it")
    if weight is None:
        return ("the constant operand is the first one (crisp prunes a constant right-hand weight)"
                if node.input[0] in consts else "weight is computed from graph inputs, not a constant")
    if node.input[0] in consts:
        return "both operands are constant (nothing to run at inference)"
    if weight.dtype.type not in PRUNABLE_DTYPES:
        return f"weight dtype {weight.dtype} is not pruned (float32 and float16 only)"
    if weight.ndim != 2 and node.op_type != "Conv":
        return f"{node.op_type} weight has {weight.ndim} dimensions (only 2-D weights are pruned)"
    return None


def _describe(idx: int, node: onnx.NodeProto, facts: _GraphFacts, exclude: tuple[str, ...], block: int) -> OnnxLayer:
    kind = "conv" if node.op_type == "Conv" else "linear"
    layer = OnnxLayer(name=node.name or f"{node.op_type}_{idx}", kind=kind, weight_name=node.input[1], weight_shape=(),
                      gemm_shape=(0, 0), out_positions=0, batch=1, prunable=False, reason="", op_type=node.op_type,
                      node_index=idx, input_name=node.input[0], output_name=node.output[0])
    why = _unbound(node, facts)
    weight = facts.consts.get(layer.weight_name)
    if why is None and node.op_type == "Conv":
        why = _bind_conv(layer, node, weight, facts)
    elif why is None:
        why = _bind_linear(layer, node, weight, facts)
    if why is not None:
        layer.reason = why
        return layer
    layer.gemm_shape = gemm_shape(layer.weight_shape)
    excluded = excluded_by((layer.name, layer.weight_name), exclude)
    layer.prunable, layer.reason = decide(kind, layer.weight_shape, layer.conv, block, excluded=excluded,
                                          uses=facts.uses.get(layer.weight_name, 0))
    if layer.prunable:
        layer.weight = weight
    return layer


def _bind_conv(layer: OnnxLayer, node: onnx.NodeProto, weight: np.ndarray, facts: _GraphFacts) -> str | None:
    layer.weight_shape = tuple(int(d) for d in weight.shape)
    if weight.ndim == 4:
        layer.conv, why = _conv_geometry(node, weight, facts.pad_modes.get(node.input[0], "zeros"))
        if layer.conv is None:
            return why
    layer.bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    return None


def _bind_linear(layer: OnnxLayer, node: onnx.NodeProto, weight: np.ndarray, facts: _GraphFacts) -> str | None:
    if node.op_type == "MatMul":
        layer.weight_transposed = True
        layer.weight_shape = (int(weight.shape[1]), int(weight.shape[0]))
        return None
    a = _attrs(node)
    layer.trans_a = bool(a.get("transA", 0))
    layer.weight_transposed = not bool(a.get("transB", 0))
    layer.alpha = float(a.get("alpha", 1.0))
    layer.beta = float(a.get("beta", 1.0))
    rows = weight.shape[1] if layer.weight_transposed else weight.shape[0]
    if len(node.input) > 2 and node.input[2]:
        bias = facts.consts.get(node.input[2])
        if bias is None:
            return "Gemm bias C is computed at run time"
        if bias.size not in (1, rows) or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
            return f"Gemm bias C of shape {tuple(bias.shape)} is not one value per output"
        layer.bias_name, layer.bias = node.input[2], bias
    layer.weight_shape = tuple(int(d) for d in (weight.T.shape if layer.weight_transposed else weight.shape))
    return None


def set_out_positions(model: onnx.ModelProto, layers: list[OnnxLayer]) -> None:
    """Fill ``out_positions`` (where the output shape is known) and ``input_dims`` from ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    except Exception:  # shape inference is best effort here; the report then shows no MACs
        return
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for layer in layers:
        if shapes.get(layer.input_name):
            layer.input_dims = tuple(shapes[layer.input_name])
        dims = shapes.get(layer.output_name)
        if not dims:
            continue
        rest = dims[2:] if layer.kind == "conv" else dims[1:-1]
        if all(d is not None for d in rest):
            layer.out_positions = int(np.prod(rest)) if rest else 1
