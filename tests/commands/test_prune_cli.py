"""`crisp prune` on the built-in digits task, and the fixed digits split."""

import json

import pytest
import torch

pytest.importorskip("sklearn")

from crisp.cli import main
from crisp.tasks.digits_data import load_digits_split


def test_digits_split_is_fixed_disjoint_and_stratified():
    a, b = load_digits_split(), load_digits_split()
    assert [len(d) for d in (a.train, a.val, a.test)] == [1078, 359, 360]
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    rows = {tuple(r.flatten().tolist()) for d in (a.train, a.val) for r in d.tensors[0]}
    overlap = sum(tuple(r.flatten().tolist()) in rows for r in a.test.tensors[0])
    assert overlap < 10  # load_digits holds a few duplicate images; the index split itself is disjoint
    assert a.train.tensors[0].shape[1:] == (1, 8, 8) and a.train.tensors[1].dtype == torch.long
    assert set(a.test.tensors[1].bincount().tolist()) <= set(range(34, 38))


def test_crisp_prune_cli_runs_and_writes_outputs(tmp_path, capsys):
    out_json, out_pt = tmp_path / "h.json", tmp_path / "m.pt"
    rc = main(["prune", "--classes", "3", "8", "--sparsity", "0.8", "--steps", "1", "--epochs-per-step", "1",
               "--pretrain-epochs", "0", "--quiet", "--shrink-head", "--json", str(out_json), "--output", str(out_pt)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "test accuracy on classes [3, 8]" in text and "conv1: dense" in text
    record = json.loads(out_json.read_text())
    assert abs(record["achieved_sparsity"] - 0.8) <= 0.01
    assert record["class_ids"] == [3, 8] and len(record["steps"]) == 2
    saved = torch.load(out_pt)
    assert saved["state_dict"]["fc2.weight"].shape[0] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".crisp-")]


def test_crisp_prune_cli_reports_bad_classes(capsys):
    assert main(["prune", "--classes", "12", "--pretrain-epochs", "0", "--quiet"]) == 1
    assert "not digits" in capsys.readouterr().err
