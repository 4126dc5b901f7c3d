"""The crisp command line."""

import json
import shutil
import subprocess

import pytest

from crisp.cli import main


def test_compile_prints_report_and_writes_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["compile", "--model", "small_cnn", "--pattern", "2:4", "--block", "16", "--sparsity", "0.8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conv2" in text and "achieved" in text
    data = json.loads(out.read_text())
    assert data["target_sparsity"] == 0.8
    assert abs(data["achieved_sparsity"] - 0.8) <= 0.01
    assert {row["name"] for row in data["layers"]} >= {"conv1", "fc2"}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_demo_checks_against_masked_dense(capsys):
    assert main(["demo", "--model", "small_cnn", "--block", "16", "--sparsity", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "OK" in text and "weights kept" in text and "MACs" in text


def test_user_errors_exit_1_with_a_message(capsys, tmp_path):
    assert main(["compile", "--model", "small_cnn", "--pattern", "5:4"]) == 1
    assert "n must be <= m" in capsys.readouterr().err
    assert main(["compile", "--model", "small_cnn", "--block", "16", "--json", str(tmp_path / "no" / "r.json")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("crisp") is None, reason="console script not installed")
def test_console_script_help():
    out = subprocess.run(["crisp", "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "compile" in out
