"""``crisp.optimize_onnx`` on ONNX models exported in the test from the in-project ResNet-50,
MobileNetV2 and VGG-16 (opsets 9, 13 and 17): full checker, onnxruntime runs, compact equals
dense, dense keeps the input weights at kept positions and obeys the pattern, and the compact
file meets the size rule. Each big export happens once per session (module-scoped fixtures)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import crisp.models
from crisp.onnx.io import save_model
from crisp.onnx.optimize import optimize_onnx_with_report
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.pattern_check import hybrid_violation


def export(name: str, opset: int, hw: int) -> onnx.ModelProto:
    model = crisp.models.build(name)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, hw, hw),), buffer, opset_version=opset, dynamo=False,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    return onnx.load_from_string(buffer.getvalue())


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(model).run(None, {"image": x})[0]


def masked_dense(source: onnx.ModelProto, result) -> onnx.ModelProto:
    """The dense-format output rebuilt from the masks (saves a second optimization of big models)."""
    out = onnx.ModelProto()
    out.CopyFrom(source)
    by_name = {layer.name: layer for layer in result.report.layers}
    for t in out.graph.initializer:
        for name, mask in result.masks.items():
            if by_name[name].weight_name == t.name:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * mask, t.name))
    return out


def check_dense_output(source: onnx.ModelProto, dense, pattern: Pattern) -> None:
    before = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in dense.model.graph.initializer}
    assert set(before) == set(after)
    layers = {layer.name: layer for layer in dense.report.layers}
    for name, mask in dense.masks.items():
        layer = layers[name]
        w_in, w_out = before[layer.weight_name], after[layer.weight_name]
        np.testing.assert_array_equal(w_out[mask], w_in[mask])
        assert not w_out[~mask].any()
        torch_mask = torch.from_numpy(mask.T.copy() if layer.op_type == "MatMul" else mask)
        assert hybrid_violation(torch_mask, pattern) is None, name
    for name in set(before) - {layers[n].weight_name for n in dense.masks}:
        assert before[name].tobytes() == after[name].tobytes(), name


def check_compact_output(result, x: np.ndarray, want: np.ndarray, tmp_path) -> None:
    onnx.checker.check_model(result.model, full_check=True)
    got = run(result.model, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    path = save_model(result.model, tmp_path / "compact.onnx")
    report = result.report
    assert path.stat().st_size <= report.size_bound()
    props = {p.key: p.value for p in result.model.metadata_props}
    assert props["crisp.pattern"] == "2:4" and float(props["crisp.sparsity.achieved"]) == pytest.approx(0.9, abs=0.01)


PATTERN = Pattern(2, 4, 32)


@pytest.fixture(scope="module")
def mobilenet_models():
    return {opset: export("mobilenet_v2", opset, 64) for opset in (9, 13, 17)}


@pytest.mark.parametrize("opset", [9, 13, 17])
def test_mobilenet_v2(mobilenet_models, opset, tmp_path):
    source = mobilenet_models[opset]
    x = np.random.default_rng(opset).standard_normal((2, 3, 64, 64)).astype(np.float32)
    compact = optimize_onnx_with_report(source)
    if opset == 13:  # the dense format once (it is the same rewrite at every opset)
        dense = optimize_onnx_with_report(source, format="dense")
        onnx.checker.check_model(dense.model, full_check=True)
        check_dense_output(source, dense, PATTERN)
        assert all(np.array_equal(dense.masks[k], compact.masks[k]) for k in dense.masks)
        reference = dense.model
    else:
        reference = masked_dense(source, compact)
    check_compact_output(compact, x, run(reference, x), tmp_path)
    # depthwise convolutions pass through with a reason
    reasons = {layer.reason for layer in compact.report.layers if not layer.pruned}
    assert any("depthwise" in r for r in reasons)


def test_resnet50_opset9(tmp_path):
    source = export("resnet50", 9, 64)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    compact = optimize_onnx_with_report(source)
    assert compact.report.opset_in == 9 and compact.report.opset_out == 13  # upgraded by the version converter
    assert len(compact.report.pruned_layers) == 54
    check_compact_output(compact, x, run(masked_dense(source, compact), x), tmp_path)
    assert compact.report.output_bytes <= compact.report.tensor_size_bound()  # the strict reading holds here too


def test_vgg16_opset17(tmp_path):
    torch_model = crisp.models.build("vgg16")
    source = export("vgg16", 17, 224)  # AdaptiveAvgPool2d(7) exports only for inputs that are multiples of 7 * 32
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    compact = optimize_onnx_with_report(source)
    del source
    assert len(compact.report.pruned_layers) == 15  # 13 convs + 3 linears, less the first conv
    first = compact.report.layers[0]  # K = 3*3*3 is below one block: dense, as crisp.compile keeps it
    assert not first.pruned and "smaller than one block" in first.reason
    # the dense reference: the torch model with the masks applied (its parameter names are the initializers')
    params = dict(torch_model.named_parameters())
    with torch.no_grad():
        for layer in compact.report.pruned_layers:
            params[layer.weight_name].mul_(torch.from_numpy(compact.masks[layer.name]))
        want = torch_model(torch.from_numpy(x)).numpy()
    check_compact_output(compact, x, want, tmp_path)
    assert compact.report.output_bytes <= compact.report.tensor_size_bound()
