"""crisp prune on the user's model file and a generated PNG folder: per-step lines, held-out
accuracy dense vs pruned, a loadable compiled model; clear errors for bad data."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import crisp
from crisp.cli import main

PIL = pytest.importorskip("PIL.Image")

MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
""")
COLORS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200), "emu": (128, 128, 128)}


@pytest.fixture
def data_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(8):
            img = np.clip(np.array(color)[None, None, :] + rng.normal(0, 30, (20, 24, 3)), 0, 255).astype(np.uint8)
            PIL.fromarray(img).save(root / name / f"{i}.png")
    (tmp_path / "net.py").write_text(MODEL)
    return tmp_path


def _argv(d, *extra):
    return ["prune", "--model", f"{d / 'net.py'}:build", "--data", str(d / "photos"), "--classes", "cat", "owl",
            "--input-size", "16,16", "--mean", "0.5", "--std", "0.25", "--pattern", "2:4", "--block", "16",
            "--sparsity", "0.75", "--steps", "1", "--epochs-per-step", "1", "--warmup-epochs", "1",
            "--saliency", "magnitude", "-o", str(d / "out.crisp"), *extra]


def test_prune_on_an_image_folder_writes_a_loadable_model(data_dir, capsys):
    assert main(_argv(data_dir)) == 0
    out = capsys.readouterr().out
    assert "12 training and 4 held-out samples of classes cat, owl (model outputs [0, 3])" in out
    assert "step 1/2: sparsity" in out and "step 2/2: sparsity" in out, out
    assert "held-out accuracy on cat, owl: dense" in out and "pruned" in out
    compiled = crisp.load(data_dir / "out.crisp")
    assert set(compiled.masks) == {"0.weight", "2.weight", "6.weight"}
    x = torch.randn(2, 3, 16, 16)
    assert compiled(x).shape == (2, 4)
    assert compiled.report.achieved_sparsity > 0.5


@pytest.mark.parametrize("change, words", [
    (lambda d: (d / "photos" / "owl" / "0.png").write_bytes(b"not a png"), "cannot read image"),
    (lambda d: [p.unlink() for p in (d / "photos" / "cat").iterdir()], "holds no images"),
    (lambda d: None, "class 'yak' is not a folder"),
])
def test_bad_data_names_the_file_or_class(data_dir, capsys, change, words):
    change(data_dir)
    argv = _argv(data_dir)
    if words.startswith("class 'yak'"):
        argv[argv.index("owl")] = "yak"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert words in err, err
    assert not (data_dir / "out.crisp").exists()
