"""``crisp optimize in.onnx -o out.onnx``: writes a checked model and a JSON report; every bad
input or output path ends with a one-line error, exit code 1 and no output file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from crisp.cli import main


def _model(path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["X", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["Y"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (64, 32, 3, 3)), ("fc", (10, 64)), ("fcb", (10,)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 32, 8, 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_optimize_writes_model_and_report(tmp_path, capsys):
    src = _model(tmp_path / "in.onnx")
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    code = main(["optimize", str(src), "-o", str(out), "--block", "16", "--sparsity", "0.85", "--report", str(report)])
    assert code == 0
    onnx.checker.check_model(str(out), full_check=True)
    data = json.loads(report.read_text())
    assert data["format"] == "compact" and data["block"] == 16 and {layer["name"] for layer in data["layers"]} == {"conv", "fc"}
    assert abs(data["achieved_sparsity"] - 0.85) < 0.05
    assert "layers pruned" in capsys.readouterr().out
    x = np.random.default_rng(1).standard_normal((2, 32, 8, 8)).astype(np.float32)
    dense = tmp_path / "dense.onnx"
    assert main(["optimize", str(src), "-o", str(dense), "--block", "16", "--sparsity", "0.85", "--format", "dense", "--quiet"]) == 0
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0] for p in (out, dense)}
    np.testing.assert_allclose(run[out], run[dense], rtol=1e-4, atol=1e-4)


def test_external_data_output(tmp_path):
    src = _model(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--format", "dense", "--external-data", "--quiet"]) == 0
    assert (tmp_path / "out.onnx.data").exists()
    onnx.checker.check_model(str(out), full_check=True)


def test_errors_are_one_line_and_leave_no_output(tmp_path, capsys):
    src = _model(tmp_path / "in.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(src.read_bytes()[:500])
    compact = tmp_path / "compact.onnx"
    assert main(["optimize", str(src), "-o", str(compact), "--quiet"]) == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        ([str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")], "does not exist"),
        ([str(tmp_path / "text.onnx"), "-o", str(tmp_path / "o.onnx")], "not a readable ONNX model"),
        ([str(cut), "-o", str(tmp_path / "o.onnx")], "ONNX"),
        ([str(src), "-o", str(tmp_path / "nope" / "o.onnx")], "does not exist"),
        ([str(src), "-o", str(tmp_path)], "folder"),
        ([str(compact), "-o", str(tmp_path / "o.onnx")], "already an output of crisp"),
        ([str(src), "-o", str(tmp_path / "o.onnx"), "--pattern", "5:4"], "n must be <= m"),
        ([str(src), "-o", str(tmp_path / "o.onnx"), "--saliency", "taylor"], "calibration"),
        ([str(src), "-o", str(tmp_path / "o.onnx"), "--saliency", "taylor", "--calibration", str(tmp_path / "none.npz")], "does not exist"),
    ]
    for args, message in cases:
        assert main(["optimize", *args]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("crisp: error:") and message in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temporary left


def test_calibration_file_and_classes(tmp_path):
    src = _model(tmp_path / "in.onnx")
    xs = np.random.default_rng(2).standard_normal((16, 32, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", inputs=xs, labels=np.arange(16) % 3)
    out = tmp_path / "out.onnx"
    code = main(["optimize", str(src), "-o", str(out), "--block", "16", "--saliency", "taylor",
                 "--calibration", str(tmp_path / "calib.npz"), "--classes", "0,2", "--quiet"])
    assert code == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["crisp.saliency"] == "taylor"
