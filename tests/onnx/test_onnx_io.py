"""Reading and writing ONNX files: every bad input gets a clear crisp error, outputs are atomic,
external data works both ways, constant subgraphs fold into initializers."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from crisp.errors import CrispError
from crisp.onnx.io import (
    OnnxInputError, OnnxOutputError, fold_constant_tensors, load_model, replace_with_initializers, save_model, skeleton,
    upgrade_opset,
)


def _model(opset: int = 13, big: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32) if big else (4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["H"], name="mm"), helper.make_node("Relu", ["H"], ["Y"], name="relu")],
        "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", w.shape[1]])], [numpy_helper.from_array(w, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("io") / "m.onnx"
    onnx.save_model(_model(), str(path))
    return path


def test_loads_a_good_file(saved):
    model = load_model(saved)
    assert [n.name for n in model.graph.node] == ["mm", "relu"]


def test_missing_file_folder_and_empty_file(tmp_path):
    with pytest.raises(OnnxInputError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(OnnxInputError, match="folder"):
        load_model(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(OnnxInputError, match="empty"):
        load_model(tmp_path / "empty.onnx")


def test_non_onnx_files(tmp_path):
    for i, data in enumerate([b"hello, this is a text file\n", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b'{"a": 1}']):
        path = tmp_path / f"f{i}.onnx"
        path.write_bytes(data)
        with pytest.raises(OnnxInputError):
            load_model(path)


@settings(max_examples=30, deadline=None)
@given(cut=st.floats(0.01, 0.99), flips=st.lists(st.integers(0, 10**6), max_size=4))
def test_truncated_or_corrupt_files_fail_clearly(tmp_path_factory, cut, flips):
    data = bytearray(_model(big=True).SerializeToString())
    data = data[: max(1, int(len(data) * cut))]
    for pos in flips:
        data[pos % len(data)] ^= 0xA5
    path = tmp_path_factory.mktemp("bad") / "bad.onnx"
    path.write_bytes(bytes(data))
    try:
        model = load_model(path)
    except OnnxInputError:
        return
    # a cut that happens to leave a valid model must really be one
    onnx.checker.check_model(model)


def test_model_failing_the_checker(tmp_path):
    bad = _model()
    bad.graph.node[1].input[0] = "undefined_tensor"
    path = tmp_path / "bad.onnx"
    onnx.save_model(bad, str(path))
    with pytest.raises(OnnxInputError, match="checker"):
        load_model(path)


def test_external_data_round_trip_and_missing_data(tmp_path):
    model = _model(big=True)
    path = save_model(model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    assert os.path.getsize(path) < 2000  # the weights live in the data file
    back = load_model(path)
    np.testing.assert_array_equal(numpy_helper.to_array(back.graph.initializer[0]), numpy_helper.to_array(model.graph.initializer[0]))
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(OnnxInputError, match="external data"):
        load_model(path)


def test_save_refuses_bad_paths_and_leaves_nothing(tmp_path):
    with pytest.raises(OnnxOutputError, match="does not exist"):
        save_model(_model(), tmp_path / "no" / "such" / "dir.onnx")
    with pytest.raises(OnnxOutputError, match="folder"):
        save_model(_model(), tmp_path)
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    with pytest.raises(OnnxOutputError, match="cannot write"):
        save_model(_model(), not_a_folder / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_failed_save_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old contents")

    def broken(model, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"half a mod")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", broken)
    with pytest.raises(OnnxOutputError, match="No space left"):
        save_model(_model(), target)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert isinstance(OnnxOutputError("x"), CrispError)


def test_upgrade_opset_and_refuse_too_old():
    old = _model(opset=9)
    up = upgrade_opset(old, 13)
    assert up.opset_import[0].version == 13 and old.opset_import[0].version == 9
    assert upgrade_opset(up, 13) is up
    with pytest.raises(OnnxInputError, match="older"):
        upgrade_opset(_model(opset=6), 13)


def test_fold_constant_node_and_constant_of_shape_weights():
    nodes = [
        helper.make_node("Constant", [], ["W1"], value=numpy_helper.from_array(np.ones((3, 4), np.float32))),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([4, 2], np.int64))),
        helper.make_node("ConstantOfShape", ["shape"], ["W2raw"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Mul", ["W2raw", "two"], ["W2"]),
        helper.make_node("MatMul", ["X", "W1"], ["H"], name="a"),
        helper.make_node("MatMul", ["H", "W2"], ["Y"], name="b"),
        helper.make_node("MatMul", ["X", "X2"], ["Z"], name="c"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 3]) for n in ("X", "X2")],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, 2]), helper.make_tensor_value_info("Z", TensorProto.FLOAT, [3, 3])],
                              [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    values = fold_constant_tensors(model, ["W1", "W2", "X2"])
    assert set(values) == {"W1", "W2"}  # X2 is an input: not constant
    np.testing.assert_array_equal(values["W2"], np.ones((4, 2), np.float32))
    replace_with_initializers(model, values)
    assert [n.name for n in model.graph.node] == ["a", "b", "c"]  # producers gone, the rest untouched
    onnx.checker.check_model(model, full_check=True)


def test_skeleton_keeps_structure_without_big_tensors():
    model = _model(big=True)
    sk = skeleton(model, keep_below=16)
    assert not sk.graph.initializer and "W" in {i.name for i in sk.graph.input}
    onnx.checker.check_model(sk, full_check=True)
    assert len(model.graph.initializer) == 1  # the original is untouched
