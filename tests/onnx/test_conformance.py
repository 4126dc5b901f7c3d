"""Conformance of ``crisp optimize`` on the files users bring: the in-project models exported by both
torch exporters (TorchScript at opset 17, dynamo at its default, which writes value_info) with dynamic
dims, hand-built IR-3 / opset 7 and 9 graphs, graphs with and without value_info, fp16. Each one is
optimized in compact and dense form and must pass the full checker, run in onnxruntime at another batch
(and spatial) size, give compact == dense within 1e-4 and dense == the input with the masks applied."""

from __future__ import annotations

import importlib.util
import io
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import crisp.models
from crisp.onnx.io import fold_constant_tensors, replace_with_initializers
from crisp.onnx.optimize import optimize_onnx_with_report

HAS_DYNAMO = importlib.util.find_spec("onnxscript") is not None  # torch's dynamo exporter needs onnxscript
MODELS = {"small_cnn": (1, 8), "resnet18": (3, 32), "mobilenet_v2": (3, 32)}  # channels, side


def export(name: str, dynamo: bool) -> onnx.ModelProto:
    channels, side = MODELS[name]
    model = crisp.models.build(name).eval()
    x = torch.randn(1, channels, side, side)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["image"], verbose=False,
                                        dynamic_shapes={"x": {0: torch.export.Dim("N")}})
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                          dynamic_axes={"image": {0: "N"}})
        return onnx.load_from_string(buffer.getvalue())


def fp16_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["X", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["Y"], name="fc", transB=1)]
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float16), n)
             for n, s in (("w", (32, 16, 3, 3)), ("b", (32,)), ("fc", (10, 32)), ("fcb", (10,)))]
    graph = helper.make_graph(nodes, "fp16", [helper.make_tensor_value_info("X", TensorProto.FLOAT16, ["N", 16, "H", "W"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds_for(model: onnx.ModelProto, rng) -> dict[str, np.ndarray]:
    """Inputs at a batch of 2 (and other spatial sizes where the dims are symbolic)."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (2 if i == 0 else 10) for i, d in enumerate(inp.type.tensor_type.shape.dim)]
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        out[inp.name] = rng.standard_normal(dims).astype(dtype)
    return out


def run(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def with_masks(source: onnx.ModelProto, result) -> onnx.ModelProto:
    """The input model (its constant weights folded) with crisp's masks applied to the pruned weights."""
    model = onnx.ModelProto()
    model.CopyFrom(source)
    names = {layer.weight_name for layer in result.report.layers if layer.weight_name}
    replace_with_initializers(model, {k: v for k, v in fold_constant_tensors(model, sorted(names)).items()
                                      if k not in {t.name for t in model.graph.initializer}})
    masks = {layer.weight_name: result.masks[layer.name] for layer in result.report.pruned_layers}
    for t in model.graph.initializer:
        if t.name in masks:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * masks[t.name].astype(np.float32), t.name)
                       if t.data_type == TensorProto.FLOAT else
                       numpy_helper.from_array((numpy_helper.to_array(t) * masks[t.name]).astype(np.float16), t.name))
    return model


def conform(source: onnx.ModelProto, block: int = 16, sparsity: float = 0.8, atol: float = 1e-4) -> dict:
    before = source.SerializeToString()
    out = {fmt: optimize_onnx_with_report(source, format=fmt, block=block, sparsity=sparsity) for fmt in ("compact", "dense")}
    assert source.SerializeToString() == before
    assert out["compact"].report.pruned_layers, out["compact"].report.format_table()
    feeds = feeds_for(source, np.random.default_rng(0))
    got = {}
    for fmt, res in out.items():
        onnx.checker.check_model(res.model, full_check=True)
        got[fmt] = run(res.model, feeds)
    want = run(with_masks(source, out["dense"]), feeds)
    for c, d, w, s in zip(got["compact"], got["dense"], want, run(source, feeds)):
        scale = max(float(np.abs(d).max()), 1e-6)
        np.testing.assert_allclose(c.astype(np.float32), d.astype(np.float32), rtol=1e-4, atol=atol * scale)
        np.testing.assert_allclose(d.astype(np.float32), w.astype(np.float32), rtol=1e-5, atol=1e-5 * scale)
    assert not np.allclose(got["dense"][0].astype(np.float32), run(source, feeds)[0].astype(np.float32), rtol=1e-3)
    dims = [d.dim_param for d in out["compact"].model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [d.dim_param for d in source.graph.input[0].type.tensor_type.shape.dim]  # symbolic dims stay
    return out


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.skipif(
    not HAS_DYNAMO, reason="torch's dynamo exporter needs onnxscript (pip install onnxscript)"))], ids=["torchscript17", "dynamo"])
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_models(name, dynamo):
    model = export(name, dynamo)
    assert bool(model.graph.value_info) == dynamo  # the dynamo exporter describes weights and activations
    out = conform(model, sparsity=0.9 if name == "resnet18" else 0.8)
    metadata = sum(len(p.key) + len(p.value) + 8 for p in out["dense"].model.metadata_props)  # crisp.* entries
    assert out["dense"].model.ByteSize() <= model.ByteSize() + metadata  # zeros in place, nothing dead left
    assert out["compact"].model.ByteSize() < 0.5 * model.ByteSize()


@pytest.mark.parametrize("opset", [7, 9])
def test_ir3_zoo_graphs(graphs, opset):
    conform(graphs["zoo_ir3"](opset), block=8, sparsity=0.7)


@pytest.mark.parametrize("value_info", [True, False], ids=["value_info", "no_value_info"])
def test_graphs_with_and_without_value_info_and_dynamic_dims(graphs, value_info):
    conform(graphs["folded_weight"](value_info=value_info), block=8, sparsity=0.7)


def test_fp16_weights_are_pruned_and_stay_fp16():
    source = fp16_graph()
    conform(source, block=8, sparsity=0.7, atol=2e-3)
    res = optimize_onnx_with_report(source, format="compact", block=8, sparsity=0.7)
    assert {t.name: t.data_type for t in res.model.graph.initializer}["w"] == TensorProto.FLOAT16
    assert all("fp16" in layer.execution for layer in res.report.pruned_layers)
