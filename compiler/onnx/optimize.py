"""``crisp.optimize_onnx``: ONNX in, hybrid-sparse ONNX out.

Steps: load and check the model -> refuse a model crisp already optimized -> (compact format)
upgrade old opsets -> find the prunable Conv/Gemm/MatMul layers and fold their constant weights
-> saliency (magnitude, or class-aware Taylor through the ONNX->fx importer) -> global hybrid
mask selection (:func:`crisp.sparsity.selection.select_hybrid_masks`, the same as the torch compiler) ->
rewrite the pruned layers, densely (zeros in place) or as ``crisp``-domain nodes defined by
model-local functions (:mod:`crisp.onnx.compact`) -> metadata -> checker.

Every other node, initializer, input, output, name and opset import is kept as it was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterable

import numpy as np
import onnx

from crisp.onnx.compact import BODIES, DOMAIN, MIN_OPSET, FunctionSet
from crisp.validate import check_names_in, check_str_list
from crisp.errors import ModelError
from crisp.progress import progress as progress_bar
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.gemm_view import gemm_to_weight, weight_to_gemm
from crisp.onnx.layer_timing import decide_body
from crisp.onnx.io import check_input, default_opset, initializer_map, load_model, tensor_nbytes, upgrade_opset
from crisp.onnx.report import OnnxLayerReport, OnnxOptimizeReport
from crisp.onnx.saliency import onnx_taylor_saliency
from crisp.onnx.tidy import (IR_INITIALIZERS_OPTIONAL, dead_initializers, drop_initializer_inputs, remove_dead_initializers,
                             sync_initializer_inputs, sync_value_info)
from crisp.onnx.verify import verify_output
from crisp.onnx.weights import find_layers, set_out_positions
from crisp.onnx.write import finish_compact_model, write_compact_layer, write_dense_layer
from crisp.sparsity.pattern import Pattern, check_sparsity, resolve_pattern
from crisp.sparsity.selection import DEFAULT_ALLOCATION, check_allocation, select_hybrid_masks

FORMATS = ("compact", "dense")
SALIENCIES = ("magnitude", "taylor")
METADATA_PREFIX = "crisp."
FP16_DENSE = "dense (fp16 weight, pruned in place: the compact functions compute in float32)"


class AlreadyOptimizedError(ModelError):
    """The ONNX model is already an output of crisp; optimizing it again would compress twice."""


def crisp_version() -> str:
    try:
        return version("crisp")
    except PackageNotFoundError:  # not installed as a distribution (e.g. run from a source tree)
        return "0+unknown"


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: OnnxOptimizeReport
    masks: dict[str, np.ndarray]  # layer name -> bool mask in the ONNX weight's layout


# ---------------------------------------------------------------------------------- entry points
def optimize_onnx(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    *,
    pattern: Pattern | str = "2:4",
    block: int | None = 32,
    sparsity: float = 0.9,
    saliency: str = "magnitude",
    calibration: Any = None,
    classes: Iterable[int] | None = None,
    format: str = "compact",
    exclude: Iterable[str] = (),
    allocation: str = DEFAULT_ALLOCATION,
) -> onnx.ModelProto:
    """Prune an ONNX model to hybrid N:M + block sparsity and return the new model.

    ``format="compact"`` writes the pruned layers as ``crisp``-domain nodes defined by
    model-local functions of standard ops (stock onnxruntime runs them); ``"dense"`` keeps
    the model's structure and writes zeros in place of the pruned weights. The input is not changed.
    """
    return optimize_onnx_with_report(
        model_or_path, pattern=pattern, block=block, sparsity=sparsity, saliency=saliency,
        calibration=calibration, classes=classes, format=format, exclude=exclude, allocation=allocation,
    ).model


def optimize_onnx_with_report(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    *,
    pattern: Pattern | str = "2:4",
    block: int | None = 32,
    sparsity: float = 0.9,
    saliency: str = "magnitude",
    calibration: Any = None,
    classes: Iterable[int] | None = None,
    format: str = "compact",
    exclude: Iterable[str] = (),
    progress: bool | None = None,
    body: str = "auto",
    allocation: str = DEFAULT_ALLOCATION,
) -> OptimizeResult:
    """Like :func:`optimize_onnx`, also returning the per-layer report and the masks.

    ``body`` (compact format only) says how each layer's function computes: ``"blocks"`` gathers
    the kept input columns per block-row and multiplies the kept blocks, ``"dense"`` rebuilds the
    dense weight (once, at session creation) and calls the standard op, ``"auto"`` (default) picks
    the faster per layer by a cost model (:func:`crisp.onnx.compact.choose_body`), ``"measure"`` by
    timing both forms of each layer in onnxruntime on its input shape (2 threads; seconds for a
    ResNet-50; not deterministic). The report's ``execution_reason`` says why, per layer."""
    start = time.perf_counter()
    pat = resolve_pattern(pattern, block if not isinstance(pattern, Pattern) else None)
    target = check_sparsity(sparsity, pat)
    _check_choices(format, body, saliency, calibration)
    allocation = check_allocation(allocation)
    exclude = check_str_list("exclude", exclude, error=ModelError)

    model, source = _read(model_or_path)
    refuse_crisp_output(model, source)
    check_opsets(model, source)
    exclude = check_names_in("exclude", exclude, [n.name for n in model.graph.node if n.name]
                             + [i.name for i in model.graph.initializer], f"a node or initializer of {source}",
                             error=ModelError)
    source_bytes, source_nodes, ir_in = model.ByteSize(), len(model.graph.node), model.ir_version
    dead_before = dead_initializers(model)
    listed = {i.name for i in model.graph.input} & {t.name for t in model.graph.initializer}
    opset_in = default_opset(model)
    if format == "compact":
        known_infos = {v.name for v in model.graph.value_info}
        model = upgrade_opset(model, MIN_OPSET)
        _keep_value_info(model, known_infos)

    layers = find_layers(model, exclude, block=pat.block)
    set_out_positions(model, layers)
    pruned = [layer for layer in layers if layer.prunable]
    if not pruned:
        raise ModelError(
            f"{source} has no prunable layer (Conv/Gemm/MatMul with a constant float32 weight); "
            + ("; ".join(f"{layer.name}: {layer.reason}" for layer in layers[:5]) or "the graph has none")
        )
    inits = initializer_map(model)
    pruned_bytes = sum(tensor_nbytes(inits[layer.weight_name]) for layer in pruned)
    # what crisp leaves alone: the input (re-measured if folding turned constant subgraphs into weights) less the pruned weights
    rest_bytes = (source_bytes if len(model.graph.node) == source_nodes else model.ByteSize()) - pruned_bytes
    weights = {layer.name: layer.weight_from_onnx(layer.weight) for layer in pruned}
    if saliency == "magnitude":
        saliencies = {layer.name: weight_to_gemm(weights[layer.name]).abs() for layer in pruned}
    else:
        saliencies = onnx_taylor_saliency(model, pruned, calibration, classes)
    selection = select_hybrid_masks(saliencies, pat, target, allocation)

    report = OnnxOptimizeReport(source, format, f"{pat.n}:{pat.m}", pat.block, saliency, target,
                                selection.achieved_sparsity, opset_in, default_opset(model))
    masks = _rewrite(model, pruned, weights, selection, pat, format, body, _metadata(report, pat), progress)
    _tidy(model, dead_before, listed, ir_in, keep_value_info=format == "dense")
    _fill_report(report, model, layers, selection, format)
    report.source_bytes, report.rest_bytes = source_bytes, rest_bytes
    verify_output(model, [layer.name for layer in pruned])
    report.seconds = time.perf_counter() - start
    return OptimizeResult(model, report, masks)


def _check_choices(format: str, body: str, saliency: str, calibration: Any) -> None:
    if format not in FORMATS:
        raise ModelError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if body not in BODIES:
        raise ModelError(f"body must be one of {', '.join(BODIES)}, got {body!r}")
    if saliency not in SALIENCIES:
        raise ModelError(f"saliency must be one of {', '.join(SALIENCIES)}, got {saliency!r}")
    if saliency == "taylor" and calibration is None:
        raise ModelError("saliency='taylor' needs calibration data (inputs, optionally labels); or use saliency='magnitude'")


def _read(model_or_path) -> tuple[onnx.ModelProto, str]:
    """A private, checked copy of the input model and a label for messages."""
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_model(model_or_path), str(model_or_path)
    check_input(model_or_path)
    model = onnx.ModelProto()
    model.CopyFrom(model_or_path)
    return model, "<ModelProto>"


def _rewrite(model, pruned, weights, selection, pattern, format, body, metadata, progress) -> dict[str, np.ndarray]:
    """Write every pruned layer (in place) and the metadata; return the masks in ONNX layout."""
    masks: dict[str, np.ndarray] = {}
    functions = FunctionSet(pattern, default_opset(model), body)
    shown = progress if progress is not None else (None if len(pruned) >= 20 else False)  # None: bar on a terminal
    for layer in progress_bar(pruned, enabled=shown, desc="crisp optimize", unit="layer"):
        weight = weights[layer.name]
        mask = gemm_to_weight(selection.layers[layer.name].mask, layer.weight_shape)
        masks[layer.name] = layer.weight_to_onnx(mask)
        if format == "dense" or layer.weight.dtype != np.float32:
            write_dense_layer(model, layer, weight * mask)
            layer.body = None if format == "dense" else FP16_DENSE
        else:
            hst = HybridSparseTensor.from_dense(weight, mask, pattern)
            chosen, layer.body_reason, layer.timing = decide_body(model, layer, hst, weight * mask, pattern, functions.opset, body)
            write_compact_layer(model, layer, hst, functions, chosen)
    if format == "compact":
        finish_compact_model(model, functions, pruned, metadata)
    else:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
    return masks


def _fill_report(report: OnnxOptimizeReport, model: onnx.ModelProto, layers, selection, format: str) -> None:
    sizes = {t.name: tensor_nbytes(t) for t in model.graph.initializer}
    crisp_tensors: set[str] = set()
    for layer in layers:
        row = OnnxLayerReport(layer.name, layer.op_type, layer.kind, layer.weight_name, list(layer.weight_shape),
                              list(layer.gemm_shape) if layer.weight_shape else [], layer.prunable, layer.reason,
                              out_positions=layer.out_positions or None)
        if layer.prunable:
            chosen = selection.layers[layer.name]
            row.kept_blocks_per_row, row.blocks_per_row = chosen.kept_blocks_per_row, chosen.blocks_per_row
            row.kept_weights, row.total_weights = chosen.kept_weights, chosen.total_weights
            row.dense_bytes = chosen.total_weights * 4
            names = list(layer.compact_names) or [layer.weight_name]
            row.stored_bytes = sum(sizes.get(n, 0) for n in names)
            row.metadata_bytes = sum(sizes[n] for n in names[1:])
            row.execution = layer.body
            row.execution_reason = layer.body_reason or None
            if layer.timing is not None:
                row.measured_blocks_ms, row.measured_dense_ms = layer.timing.blocks_ms, layer.timing.dense_ms
                row.measured_context = layer.timing.context
            crisp_tensors.update(names)
        report.layers.append(row)
    report.dense_weight_bytes = sum(r.dense_bytes for r in report.pruned_layers)
    report.stored_weight_bytes = sum(r.stored_bytes for r in report.pruned_layers)
    report.metadata_bytes = sum(r.metadata_bytes for r in report.pruned_layers)
    report.untouched_bytes = sum(v for k, v in sizes.items() if k not in crisp_tensors)
    report.output_bytes = model.ByteSize()


def refuse_crisp_output(model: onnx.ModelProto, label: str) -> None:
    """Raise AlreadyOptimizedError when ``model`` carries crisp's metadata, domain or functions."""
    marks = [p.key for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)]
    marks += [f"opset domain {o.domain!r}" for o in model.opset_import if o.domain == DOMAIN]
    marks += [f"function {f.name}" for f in model.functions if f.domain == DOMAIN][:1]
    if marks:
        raise AlreadyOptimizedError(
            f"{label} is already an output of crisp ({marks[0]}); optimizing it again would compress twice. "
            "Optimize the original model instead."
        )


# ---------------------------------------------------------------------------------- helpers
def check_opsets(model: onnx.ModelProto, label: str) -> None:
    """Refuse a default-domain opset newer than this onnx knows (nothing could check or run it)."""
    newest = onnx.defs.onnx_opset_version()
    opset = default_opset(model)
    if opset > newest:
        raise ModelError(
            f"{label} imports opset {opset} of the default ONNX domain, newer than the newest this onnx "
            f"{onnx.__version__} knows ({newest}); re-export it at opset <= {newest} or upgrade onnx and onnxruntime"
        )


def _tidy(model: onnx.ModelProto, dead_before: set[str], listed: set[str], ir_in: int, keep_value_info: bool) -> None:
    """After the rewrite: drop the initializers crisp left unread (a folded ``Mul(W0, S)``'s W0 and S),
    list initializers as graph inputs as the IR version asks, and bring value_info in step (dense form)
    or drop it (compact form: onnxruntime runs the crisp nodes faster when it infers the shapes itself)."""
    remove_dead_initializers(model, dead_before)
    if ir_in < IR_INITIALIZERS_OPTIONAL <= model.ir_version:
        drop_initializer_inputs(model)  # IR 3 listed them only because it had to; now they are constants
    else:
        sync_initializer_inputs(model, listed)
    if keep_value_info:
        sync_value_info(model)
    else:
        del model.graph.value_info[:]


def _keep_value_info(model: onnx.ModelProto, names: set[str]) -> None:
    """Drop the value_info entries the version converter added (keep the model as it was)."""
    infos = [v for v in model.graph.value_info if v.name in names]
    if len(infos) != len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(infos)


def _metadata(report: OnnxOptimizeReport, pattern: Pattern) -> dict[str, str]:
    entries = {
        "crisp.version": crisp_version(),
        "crisp.format": report.format,
        "crisp.pattern": f"{pattern.n}:{pattern.m}",
        "crisp.block": str(pattern.block),
        "crisp.saliency": report.saliency,
        "crisp.sparsity.target": f"{report.target_sparsity:.6g}",
        "crisp.sparsity.achieved": f"{report.achieved_sparsity:.6g}",
    }
    return entries
