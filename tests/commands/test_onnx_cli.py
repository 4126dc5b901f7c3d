"""``crisp optimize in.onnx -o out.onnx``: writes a checked model and a JSON report; every bad
input or output path ends with a one-line error, exit code 1 and no output file."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

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


def _snapshot(folder):
    return {p.name: (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None) for p in folder.iterdir()}


def test_outputs_that_would_overwrite_an_input_are_refused_before_any_work(tmp_path, capsys):
    src = _model(tmp_path / "in.onnx")
    ext = tmp_path / "ext.onnx"
    assert main(["optimize", str(src), "-o", str(ext), "--format", "dense", "--external-data", "--quiet"]) == 0
    onnx.save_model(onnx.load(str(ext)), str(tmp_path / "w.onnx"), save_as_external_data=True, location="w.bin")
    (tmp_path / "link.onnx").symlink_to(src)
    before = _snapshot(tmp_path)
    cases = [
        ([str(src), "-o", str(src)], "is the input model"),
        ([str(src), "-o", str(tmp_path / "." / "in.onnx")], "is the input model"),
        ([str(src), "-o", str(tmp_path / "link.onnx")], "is the input model"),  # a symlink to the input
        ([str(tmp_path / "w.onnx"), "-o", str(tmp_path / "w.bin")], "external data"),
        ([str(src), "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "o.onnx")], "is the output model"),
        ([str(src), "-o", str(tmp_path / "o.onnx"), "--report", str(src)], "is the input model"),
        ([str(src), "-o", str(tmp_path / "o.onnx"), "--external-data", "--report", str(tmp_path / "o.onnx.data")], "report"),
    ]
    for args, message in cases:
        assert main(["optimize", *args, "--quiet"]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("crisp: error:") and message in err, (args, err)
    assert _snapshot(tmp_path) == before  # no file changed, none added


def test_symlinks_are_written_through_and_fifos_refused(tmp_path, capsys):
    src = _model(tmp_path / "in.onnx")
    real = tmp_path / "real.onnx"
    real.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(real)
    assert main(["optimize", str(src), "-o", str(link), "--quiet"]) == 0
    assert link.is_symlink() and onnx.load(str(real)).graph.node  # the link stays, its target has the model
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    assert main(["optimize", str(src), "-o", str(fifo), "--quiet"]) == 1
    assert "not a regular file" in capsys.readouterr().err and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert main(["optimize", str(src), "-o", "/dev/null", "--quiet"]) == 1


SIGTERM_DURING_WRITE = """
import os, signal, sys, onnx
import crisp.onnx.io as io
real_save = onnx.save_model
def save_then_die(model, path, *a, **k):
    real_save(model, path, *a, **k)  # the temporary file is complete, the rename has not happened
    os.kill(os.getpid(), signal.SIGTERM)
io.onnx.save_model = save_then_die
from crisp.cli import main
sys.exit(main(["optimize", sys.argv[1], "-o", sys.argv[2], "--quiet"]))
"""


def test_sigterm_during_the_write_leaves_no_temporary_file(tmp_path):
    src = _model(tmp_path / "in.onnx")
    before = src.read_bytes()
    proc = subprocess.run([sys.executable, "-c", SIGTERM_DURING_WRITE, str(src), str(tmp_path / "out.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"] and src.read_bytes() == before
