"""Time one pruned layer both ways in onnxruntime on its real input shape: the ``crisp`` node that
multiplies the kept blocks, and the standard op on the masked dense weight (what ``body="dense"``
runs after constant folding)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from crisp.onnx.compact.cost import choose_body, context_fraction, cost_reason
from crisp.onnx.compact.functions import FunctionSet
from crisp.onnx.weights import OnnxLayer
from crisp.onnx.write import finish_compact_model, write_compact_layer, write_dense_layer
from crisp.runtime.timed_rounds import timed_rounds
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern

REPEATS = 15  # timed runs of each form, interleaved; the minimum is kept
BUDGET_S = 1.0  # ... or fewer (at least 3) once one batch of a layer has taken this long
BATCHES = (1, 8)  # a symbolic batch is timed at each; a layer runs on kept blocks only if they win at every one
# Times are process CPU time with onnxruntime's spin-waiting off: the work both forms do, which other
# processes on the machine barely change (wall-clock minima of 1-ms runs on a loaded machine vary 2x).


@dataclass
class LayerTiming:
    """CPU milliseconds of both forms of one layer, per timed batch size."""

    blocks_ms: dict[int, float]
    dense_ms: dict[int, float]
    context: float = 0.0  # what kept blocks cost the model around the layer, as a fraction of its dense time

    @property
    def faster(self) -> str:
        """``"blocks"`` when the kept blocks, plus their cost to the model around them, beat the dense op
        at every timed batch, else ``"dense"``."""
        return "blocks" if all(self.blocks_ms[b] + self.context * self.dense_ms[b] < self.dense_ms[b]
                               for b in self.blocks_ms) else "dense"

    def reason(self) -> str:
        batches = " / ".join(map(str, self.blocks_ms))
        return (f"measured in onnxruntime (CPU ms at batch {batches}): kept blocks "
                f"{' / '.join(f'{v:.3f}' for v in self.blocks_ms.values())} (+{100 * self.context:.0f} % of dense for the "
                f"unfused ops around them), dense op {' / '.join(f'{v:.3f}' for v in self.dense_ms.values())}")


def _single_layer_model(model: onnx.ModelProto, layer: OnnxLayer, dims: list[int]) -> onnx.ModelProto | None:
    """A model of ``layer``'s node alone (its constant inputs copied), input shape ``dims``; None when
    an input other than the activation is not an initializer."""
    node = model.graph.node[layer.node_index]
    inits = {t.name: t for t in model.graph.initializer}
    if any(name and name != layer.input_name and name not in inits for name in node.input):
        return None
    elem = next((t.data_type for t in model.graph.initializer if t.name == layer.weight_name), onnx.TensorProto.FLOAT)
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info(layer.input_name, elem, dims)],
        [helper.make_tensor_value_info(layer.output_name, elem, None)],
        [inits[name] for name in dict.fromkeys(node.input) if name in inits])
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 8))
    return out


def layer_models(model: onnx.ModelProto, layer: OnnxLayer, hst: HybridSparseTensor, masked: torch.Tensor,
                 pattern: Pattern, opset: int, dims: list[int]) -> dict[str, bytes] | None:
    """The serialized one-layer models ``{"blocks": ..., "dense": ...}`` of a pruned float32 layer."""
    base = _single_layer_model(model, layer, dims)
    if base is None:
        return None
    one = dataclasses.replace(layer, node_index=0, compact_names=())
    dense, blocks = onnx.ModelProto(), onnx.ModelProto()
    dense.CopyFrom(base)
    blocks.CopyFrom(base)
    write_dense_layer(dense, one, masked)
    functions = FunctionSet(pattern, opset, "blocks")
    write_compact_layer(blocks, one, hst, functions)
    finish_compact_model(blocks, functions, [one], {})
    return {"blocks": blocks.SerializeToString(), "dense": dense.SerializeToString()}


def _session(data: bytes, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def time_models(models: dict[str, bytes], dims: list[int], threads: int = 2, repeats: int = REPEATS,
                seed: int = 0) -> dict[str, float]:
    """Minimum CPU milliseconds (all threads of this process) of each model on one random input, runs interleaved."""
    sessions = {name: _session(data, threads) for name, data in models.items()}
    first = next(iter(sessions.values())).get_inputs()[0]
    feed = {first.name: np.random.default_rng(seed).standard_normal(dims).astype(np.float32)}
    # after one warm-up run each (allocations; constant folding is done at load)
    runs = timed_rounds({name: (lambda sess=sess: sess.run(None, feed)) for name, sess in sessions.items()},
                        rounds=repeats, min_rounds=3, budget_s=BUDGET_S, clock=time.process_time)
    return {name: min(times, default=float("inf")) for name, times in runs.items()}


def time_layer(model: onnx.ModelProto, layer: OnnxLayer, hst: HybridSparseTensor, masked: torch.Tensor,
               pattern: Pattern, opset: int, shapes: list[list[int]], threads: int = 2) -> LayerTiming | None:
    """Both forms of ``layer`` timed on each input shape of ``shapes`` (one per batch size); None when
    the layer cannot stand alone."""
    blocks, dense = {}, {}
    for dims in shapes:
        models = layer_models(model, layer, hst, masked, pattern, opset, dims)
        if models is None:
            return None
        ms = time_models(models, dims, threads)
        blocks[dims[0]], dense[dims[0]] = ms["blocks"], ms["dense"]
    return LayerTiming(blocks_ms=blocks, dense_ms=dense, context=context_fraction(hst, layer.kind))


def measure_shapes(layer: OnnxLayer) -> list[list[int]] | None:
    """The input shapes to time ``layer`` on: a symbolic batch at each of :data:`BATCHES`, a fixed one
    as it is; None when another dim is unknown."""
    dims = layer.input_dims
    if not dims or any(d is None for d in dims[1:]):
        return None
    rest = [int(d) for d in dims[1:]]
    return [[b, *rest] for b in BATCHES] if dims[0] is None else [[int(dims[0]), *rest]]


def decide_body(model: onnx.ModelProto, layer: OnnxLayer, hst: HybridSparseTensor, masked: torch.Tensor,
                pattern: Pattern, opset: int, body: str, threads: int = 2) -> tuple[str, str, LayerTiming | None]:
    """``(body, why, timing)`` of one compact layer: the asked body, the cost model's choice
    (``"auto"``) or the faster of the two forms timed on the layer's input shape (``"measure"``; the
    cost model where the shape is not known)."""
    if body in ("blocks", "dense"):
        return body, f"body={body!r} asked", None
    pointwise = layer.conv.pointwise if layer.kind == "conv" else True
    if body == "measure":
        shapes = measure_shapes(layer)
        timing = None if shapes is None else time_layer(model, layer, hst, masked, pattern, opset, shapes, threads)
        if timing is not None:
            return timing.faster, timing.reason(), timing
        return (choose_body(hst, layer.kind, pointwise), cost_reason(hst, layer.kind, pointwise) + " (input shape unknown)",
                None)
    return choose_body(hst, layer.kind, pointwise), cost_reason(hst, layer.kind, pointwise), None
