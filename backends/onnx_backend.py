"""The ``onnx`` target: a model compiled from PyTorch, exported to crisp's compact ONNX form and
run by stock onnxruntime.

:func:`export_lowered_to_onnx` turns the lowered graph back into standard layers whose weights
are the compact tensors decoded (``F.conv2d`` / ``F.linear`` in place of each lowered
unfold -> ``crisp::hybrid_sparse_gemm`` -> reshape subgraph), exports that with
``torch.onnx.export``, and then rewrites every pruned Conv/Gemm/MatMul as a ``crisp``-domain node
on the *same* compact tensors (no second selection), exactly like ``crisp.optimize_onnx`` writes
its output. :func:`export_compiled_to_onnx` is the same for a ``CompiledModel``
(``CompiledModel.to_onnx(path)``).
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from typing import Any, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import fx

from crisp.errors import CrispError, ModelError
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.ir.layer_info import META_KEY, LayerInfo
from crisp.ir.meta import LOWERED_KEY

from crisp.onnx.compact import MIN_OPSET, FunctionSet
from crisp.onnx.io import save_model
from crisp.onnx.optimize import crisp_version
from crisp.onnx.weights import find_layers
from crisp.onnx.write import finish_compact_model, write_compact_layer
from crisp.backends.registry import BackendInput, BackendOutput, register_backend

DEFAULT_OPSET = 17


class OnnxExportError(CrispError, RuntimeError):
    """A compiled model that crisp cannot export to ONNX."""


# ---------------------------------------------------------------------------------- lowered -> dense
def _dense_equivalent(graph_module: fx.GraphModule) -> tuple[fx.GraphModule, dict[str, HybridSparseTensor]]:
    """A copy of the lowered graph with each lowered subgraph replaced by F.conv2d / F.linear on
    the decoded compact weight (a buffer ``<layer path>.crisp_dense_weight``). Returns the copy and
    ``{buffer name: compact tensor}``."""
    gm = copy.deepcopy(graph_module)
    graph = gm.graph
    weights: dict[str, HybridSparseTensor] = {}
    for gemm in [n for n in graph.nodes if isinstance(n.meta.get(META_KEY), LayerInfo) and n.meta[META_KEY].compact is not None]:
        info: LayerInfo = gemm.meta[META_KEY]
        group = [n for n in graph.nodes if n.meta.get(LOWERED_KEY) == info.name]
        members = set(group)
        outside_inputs = [a for n in group for a in n.all_input_nodes if a not in members]
        if len({id(a) for a in outside_inputs}) != 1:
            raise OnnxExportError(f"layer {info.name!r}: its lowered subgraph does not read exactly one activation")
        x = outside_inputs[0]
        ends = [n for n in group if any(u not in members for u in n.users)]
        if len(ends) != 1:
            raise OnnxExportError(f"layer {info.name!r}: its lowered subgraph has {len(ends)} outputs, expected 1")
        values_attr = next(n for n in group if n.op == "get_attr" and str(n.target).endswith(".values"))
        path = str(values_attr.target)[: -len(".values")]
        holder = gm.get_submodule(path)
        holder.register_buffer("crisp_dense_weight", info.compact.to_dense().to(torch.float32))
        has_bias = getattr(holder, "bias", None) is not None
        weights[f"{path}.crisp_dense_weight"] = info.compact
        with graph.inserting_before(ends[0]):
            w = graph.get_attr(f"{path}.crisp_dense_weight")
            b = graph.get_attr(f"{path}.bias") if has_bias else None
            if info.kind == "conv":
                c = info.conv
                new = graph.call_function(F.conv2d, (x, w, b), {
                    "stride": tuple(c.strides), "padding": tuple(c.padding), "dilation": tuple(c.dilations), "groups": 1,
                })
            else:
                new = graph.call_function(F.linear, (x, w, b))
        ends[0].replace_all_uses_with(new)
        for node in reversed(list(graph.nodes)):
            if node in members:
                graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm, weights


def _example_inputs(graph_module: fx.GraphModule, example_inputs: Sequence | None) -> tuple:
    if example_inputs is not None:
        return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    inputs = []
    for node in graph_module.graph.nodes:
        if node.op != "placeholder":
            continue
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise OnnxExportError("the lowered graph has no input shapes; pass example_inputs")
        inputs.append(torch.zeros(tuple(meta.shape), dtype=meta.dtype))
    return tuple(inputs)


# ---------------------------------------------------------------------------------- export
def export_lowered_to_onnx(
    graph_module: fx.GraphModule,
    layers: list[LayerInfo],
    example_inputs: Sequence | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    metadata: dict[str, str] | None = None,
    body: str = "auto",
) -> onnx.ModelProto:
    """The compact ONNX model of a lowered graph (see the module docstring); ``body`` as in
    :func:`crisp.onnx.optimize.optimize_onnx_with_report`."""
    if opset < MIN_OPSET:
        raise OnnxExportError(f"opset {opset} is too old for crisp's ONNX functions; use opset >= {MIN_OPSET}")
    dense_gm, weights = _dense_equivalent(graph_module)
    if not weights:
        raise OnnxExportError("the compiled model has no pruned layer to export compactly")
    inputs = _example_inputs(graph_module, example_inputs)
    names_in = [f"input_{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                dense_gm, inputs, buffer, opset_version=opset, dynamo=False, input_names=names_in, output_names=["output"],
                dynamic_axes={name: {0: "batch"} for name in names_in + ["output"]} if dynamic_batch else None,
            )
    except Exception as exc:  # the exporter raises many exception types; name the stage
        raise OnnxExportError(f"torch.onnx.export failed on the compiled model: {type(exc).__name__}: {exc}") from exc
    model = onnx.load_from_string(buffer.getvalue())
    onnx_layers = {layer.weight_name: layer for layer in find_layers(model, block=next(iter(weights.values())).pattern.block)}
    inits = {t.name: t for t in model.graph.initializer}
    matched = []
    for buffer_name, hst in weights.items():
        layer = onnx_layers.get(buffer_name) or _match_by_value(onnx_layers, inits, hst)
        if layer is None or not layer.prunable:
            why = "" if layer is None else f" ({layer.reason})"
            raise OnnxExportError(f"cannot find the exported ONNX node of {buffer_name!r}{why}")
        matched.append((layer, hst))
    pattern = next(iter(weights.values())).pattern
    functions = FunctionSet(pattern, opset, body)
    for layer, hst in matched:
        write_compact_layer(model, layer, hst, functions)
    finish_compact_model(model, functions, [layer for layer, _ in matched], metadata or {})
    return model


def _match_by_value(onnx_layers: dict, inits: dict, hst: HybridSparseTensor):
    dense = hst.to_dense().numpy()
    for layer in onnx_layers.values():
        t = inits.get(layer.weight_name)
        if t is None or tuple(t.dims) not in (dense.shape, dense.T.shape):
            continue
        array = numpy_helper.to_array(t)
        candidate = array.T if layer.weight_transposed else array
        if candidate.shape == dense.shape and np.array_equal(candidate, dense):
            return layer
    return None


def _metadata_for(layers: list[LayerInfo], report: Any = None) -> dict[str, str]:
    pruned = [i for i in layers if i.compact is not None]
    p = pruned[0].compact.pattern
    meta = {"crisp.version": crisp_version(), "crisp.format": "compact", "crisp.pattern": f"{p.n}:{p.m}",
            "crisp.block": str(p.block), "crisp.source": "crisp.compile"}
    achieved = getattr(report, "achieved_sparsity", None)
    if achieved is not None:
        meta["crisp.sparsity.achieved"] = f"{achieved:.6g}"
    target = getattr(report, "target_sparsity", None)
    if target is not None:
        meta["crisp.sparsity.target"] = f"{target:.6g}"
    return meta


def export_compiled_to_onnx(compiled: Any, path: str | os.PathLike | None = None, *, example_inputs: Sequence | None = None,
                            opset: int = DEFAULT_OPSET, external_data: bool | None = None, body: str = "auto") -> onnx.ModelProto:
    """``CompiledModel.to_onnx(path)``: the compact ONNX model of a compiled model, written
    atomically to ``path`` when given, and returned."""
    graph_module = getattr(compiled, "graph_module", None)
    layers = getattr(compiled, "layers", None)
    if not isinstance(graph_module, fx.GraphModule) or layers is None:
        raise ModelError(f"export_compiled_to_onnx takes a crisp CompiledModel, got {type(compiled).__name__}")
    model = export_lowered_to_onnx(graph_module, layers, example_inputs, opset=opset, body=body,
                                   metadata=_metadata_for(layers, getattr(compiled, "report", None)))
    if path is not None:
        save_model(model, path, external_data=external_data)
    return model


# ---------------------------------------------------------------------------------- the target
class OnnxRuntimeModule(torch.nn.Module):
    """Runs an ONNX model with onnxruntime on CPU; tensors in, tensors out."""

    def __init__(self, model: onnx.ModelProto, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *inputs: torch.Tensor):
        feeds = {name: np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32)) for name, x in zip(self.input_names, inputs)}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outs[0] if len(outs) == 1 else tuple(outs)


@register_backend("onnx", options=("opset", "threads", "onnx_body"))
def onnx_backend(lowered: BackendInput) -> BackendOutput:
    """Export the lowered graph to compact ONNX and run it with onnxruntime. Options:
    ``opset`` (default 17), ``threads`` (onnxruntime intra-op threads), ``onnx_body``
    ("auto", "blocks" or "dense", see ``optimize_onnx_with_report``)."""
    opts = lowered.options
    model = export_lowered_to_onnx(lowered.graph_module, lowered.layers, lowered.example_inputs,
                                   opset=int(opts.get("opset", DEFAULT_OPSET)), body=str(opts.get("onnx_body", "auto")),
                                   metadata=_metadata_for(lowered.layers))
    return BackendOutput(module=OnnxRuntimeModule(model, opts.get("threads")), artifacts={"onnx_model": model})
