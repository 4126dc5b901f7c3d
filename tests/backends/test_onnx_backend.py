"""A model compiled from PyTorch exports to the same compact ONNX form (``export_compiled_to_onnx``,
the future ``CompiledModel.to_onnx``) and runs on the ``onnx`` target."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import crisp
from crisp.backends import registered_backends
from crisp.backends.onnx_backend import OnnxExportError, export_compiled_to_onnx
from crisp.errors import ModelError
from crisp.onnx.optimize import AlreadyOptimizedError, optimize_onnx


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1, bias=False), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 48, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(48, 40, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(40, 10),
    )
    return crisp.models.registry.randomize_batchnorm(net).eval()


@pytest.fixture(scope="module")
def compiled():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return crisp.compile(small_net(), (x,), pattern="2:4", block=8, sparsity=0.8), x


def test_export_matches_the_compiled_model(compiled, tmp_path):
    c, x = compiled
    path = tmp_path / "r18.onnx"
    model = export_compiled_to_onnx(c, path)
    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    want = c(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    # one crisp node per pruned layer, on the very compact tensors of the compile (no second selection)
    pruned = [info for info in c.layers if info.compact is not None]
    crisp_nodes = [n for n in model.graph.node if n.domain == "crisp"]
    assert len(crisp_nodes) == len(pruned)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for info in pruned:
        name = f"{info.name}.crisp_dense_weight"
        rows = info.compact.shape[0]
        by_row = info.compact.values_by_row().reshape(-1, info.compact.values_by_row().shape[-1])[:rows].numpy()
        stored = values[name]
        np.testing.assert_array_equal(stored, by_row[:, : stored.shape[1]])
    props = {p.key: p.value for p in model.metadata_props}
    assert props["crisp.source"] == "crisp.compile" and props["crisp.pattern"] == "2:4"
    with pytest.raises(AlreadyOptimizedError):
        optimize_onnx(model)


def test_batch_size_is_free(compiled):
    c, x = compiled
    model = export_compiled_to_onnx(c)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x5 = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(sess.run(None, {"input": x5.numpy()})[0], c(x5).numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_target_runs_in_onnxruntime():
    assert "onnx" in registered_backends()
    model = small_net()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    on_onnx = crisp.compile(model, (x,), target="onnx", block=8, sparsity=0.8)
    reference = crisp.compile(model, (x,), block=8, sparsity=0.8)
    assert isinstance(on_onnx.artifacts["onnx_model"], onnx.ModelProto)
    np.testing.assert_allclose(on_onnx(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-5)


def test_export_errors(compiled):
    with pytest.raises(ModelError, match="CompiledModel"):
        export_compiled_to_onnx(torch.nn.Linear(2, 2))
    c, _ = compiled
    with pytest.raises(OnnxExportError, match="opset"):
        export_compiled_to_onnx(c, opset=11)
