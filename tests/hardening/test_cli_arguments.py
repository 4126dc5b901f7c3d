"""The CLI: bad option values are usage errors (no traceback), bad checkpoints a clear error, and
output paths are checked before the work starts."""

from __future__ import annotations

import pytest

from crisp.cli import main


@pytest.mark.parametrize("argv, words", [
    (["compile", "--model", "small_cnn", "--batch", "-1"], "--batch"),
    (["compile", "--model", "small_cnn", "--num-classes", "-3"], "--num-classes"),
    (["compile", "--model", "small_cnn", "--block", "0"], "--block"),
    (["compile", "--model", "small_cnn", "--sparsity", "nan"], "--sparsity"),
    (["compile", "--model", "small_cnn", "--seed", "abc"], "--seed"),
])
def test_bad_option_values_are_usage_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and words in err and "Traceback" not in err


def test_json_into_a_missing_folder_fails_before_the_work(tmp_path, capsys, monkeypatch):
    import crisp

    def boom(*a, **k):
        raise AssertionError("compile ran although the output path is bad")

    monkeypatch.setattr(crisp, "compile", boom)
    bad = tmp_path / "no" / "such" / "r.json"
    assert main(["compile", "--model", "small_cnn", "--json", str(bad)]) == 1
    assert "--json" in capsys.readouterr().err and not bad.exists()


def test_json_into_a_folder_fails(tmp_path, capsys):
    assert main(["compile", "--model", "small_cnn", "--json", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_prune_checkpoint_that_is_not_a_state_dict(tmp_path, capsys):
    pytest.importorskip("sklearn")
    f = tmp_path / "model.onnx"
    f.write_bytes(b"\x08\x07\x12\x04onnx not a pickle")
    assert main(["prune", "--classes", "3", "5", "--checkpoint", str(f)]) == 1
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "model.onnx" in err and "Traceback" not in err
