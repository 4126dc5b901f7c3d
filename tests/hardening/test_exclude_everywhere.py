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
