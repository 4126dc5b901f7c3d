"""``exclude=["nope"]`` is refused the same way by crisp.compile, crisp.optimize_onnx, ``crisp optimize
--exclude`` and crisp.prune, naming the argument; nothing is written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import crisp
from crisp.cli import main


def onnx_gemm() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_optimize_onnx_refuses_unknown_exclude():
    with pytest.raises(crisp.ModelError, match="exclude names 'nope'"):
        crisp.optimize_onnx(onnx_gemm(), pattern="2:4", block=32, sparsity=0.6, exclude=["nope"])


def test_optimize_onnx_accepts_a_node_name():
    with pytest.raises(crisp.ModelError, match="no prunable layer"):
        crisp.optimize_onnx(onnx_gemm(), pattern="2:4", block=32, sparsity=0.6, exclude=["mm"])


def test_cli_optimize_refuses_unknown_exclude(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(onnx_gemm(), src)
    code = main(["optimize", str(src), "-o", str(out), "--sparsity", "0.6", "--exclude", "nope"])
    assert code != 0 and "nope" in capsys.readouterr().err and not out.exists()


def test_prune_and_compile_refuse_unknown_exclude():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with pytest.raises(crisp.ModelError, match="exclude names 'nope'"):
        crisp.compile(model, (torch.randn(1, 64),), exclude=["nope"])
    data = [(torch.randn(4, 64), torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(crisp.ModelError, match="exclude names 'nope'"):
        crisp.prune(model, data, classes=[0, 1], exclude=["nope"], steps=1, epochs_per_step=0, warmup_epochs=0)


class _DataDependent(nn.Module):
    """A block torch.fx cannot trace (Python control flow on a tensor value)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


class _TwoStages(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(32, 32, 3, padding=1)
        self.odd_a = _DataDependent()
        self.odd_b = _DataDependent()
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.odd_b(self.odd_a(torch.relu(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def test_a_glob_exclude_is_not_traced_into():
    """``exclude=["odd_*"]`` keeps both untraceable blocks opaque (and dense), exactly like naming them."""
    torch.manual_seed(0)
    model, x = _TwoStages().eval(), torch.randn(2, 32, 6, 6)
    by_glob = crisp.compile(model, (x,), target="reference", pattern="2:4", block=16, sparsity=0.8, exclude=["odd_*"])
    by_name = crisp.compile(model, (x,), target="reference", pattern="2:4", block=16, sparsity=0.8,
                            exclude=["odd_a", "odd_b"])
    assert by_glob.masks.keys() == by_name.masks.keys() == {"stem.weight", "fc.weight"}
    assert torch.equal(by_glob(x), by_name(x))
    with torch.no_grad():
        assert torch.allclose(by_glob(x), crisp.apply_masks(model, by_glob.masks)(x), rtol=1e-4, atol=1e-5)
