"""--model from anywhere (file:FACTORY, package.module:FACTORY, timm/torchvision hints), --weights,
--input-shape, crisp compile -o, crisp info, --plot; the saved file loads in a process without the source."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch

import crisp
from crisp.cli import main

MODEL_SRC = textwrap.dedent("""
    import torch
    from torch import nn
    from helpers import WIDTH   # a neighbour module of the model file

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, WIDTH, 3, padding=1)
            self.conv2 = nn.Conv2d(WIDTH, WIDTH, 3, padding=1)
            self.fc = nn.Linear(WIDTH, 5)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv(x))))
            return self.fc(x.mean((2, 3)))

    def build():
        return Net()
""")


@pytest.fixture
def model_dir(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "mynet.py").write_text(MODEL_SRC)
    (src / "helpers.py").write_text("WIDTH = 32\n")
    return src


def _user_model(model_dir, weights=None):
    sys.path.insert(0, str(model_dir))
    try:
        spec = importlib.util.spec_from_file_location("mynet_for_test", model_dir / "mynet.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(model_dir))
    model = mod.build()
    if weights is not None:
        model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def test_compile_a_model_file_with_weights_and_load_elsewhere(model_dir, tmp_path, capsys):
    torch.manual_seed(3)
    trained = _user_model(model_dir)
    weights = tmp_path / "w.pt"
    torch.save(trained.state_dict(), weights)
    out = tmp_path / "out" / "net.crisp"
    out.parent.mkdir()
    argv = ["compile", "--model", f"{model_dir / 'mynet.py'}:build", "--weights", str(weights),
            "--input-shape", "2,3,16,16", "--block", "16", "--sparsity", "0.8", "-o", str(out)]
    assert main(argv) == 0
    assert "compiled model written to" in capsys.readouterr().out
    x = torch.randn(3, 3, 16, 16)
    masks = crisp.load(out).masks
    assert set(masks) == {"conv.weight", "conv2.weight", "fc.weight"}
    with torch.no_grad():
        expected = crisp.apply_masks(_user_model(model_dir, weights), masks)(x)
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    code = ("import sys, torch, crisp\n"
            "assert not any('src' in p for p in sys.path)\n"
            "d = torch.load('../io.pt', weights_only=True)\n"
            "y = crisp.load('net.crisp')(d['x'])\n"
            "err = ((y - d['y']).abs().max() / d['y'].abs().max()).item()\n"
            "assert err <= 1e-4, err\n"
            "print('ok', err)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=out.parent, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ok" in run.stdout
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "format version 1" in text and "conv2" in text and "2x3x16x16" in text


def test_package_module_factory_and_plot(model_dir, tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "pkgroot" / "userpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODEL_SRC.replace("from helpers import WIDTH", "WIDTH = 16"))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgroot"))
    argv = ["compile", "--model", "userpkg.nets:build", "--input-shape", "1,3,8,8", "--block", "16",
            "--sparsity", "0.8", "--target", "reference"]
    if importlib.util.find_spec("matplotlib") is not None:
        argv += ["--plot", str(tmp_path / "p.png")]
    assert main(argv) == 0
    assert "conv2" in capsys.readouterr().out
    if "--plot" in argv:
        assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("spec, words", [
    ("nosuch", "unknown model 'nosuch'"),
    ("missing/file.py:build", "does not exist"),
    ("{dir}/mynet.py:nope", "has no callable 'nope'"),
    ("{dir}/helpers.py:WIDTH", "has no callable"),
    ("no_such_pkg_xyz.mod:build", "cannot import module"),
])
def test_bad_model_specs_name_what_is_wrong(model_dir, spec, words, capsys):
    assert main(["compile", "--model", spec.format(dir=model_dir), "--input-shape", "1,3,8,8"]) == 1
    assert words in capsys.readouterr().err


def test_hub_models_name_the_missing_package(capsys):
    for lib in ("timm", "torchvision"):
        if importlib.util.find_spec(lib) is not None:
            continue
        assert main(["compile", "--model", f"{lib}:resnet18"]) == 1
        assert f"pip install {lib}" in capsys.readouterr().err


def test_weights_that_do_not_fit_name_the_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    assert main(["compile", "--model", f"{model_dir / 'mynet.py'}:build", "--weights", str(bad),
                 "--input-shape", "1,3,8,8"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "does not fit the model" in err


def test_info_on_a_foreign_file_is_a_format_error(tmp_path, capsys):
    (tmp_path / "x.crisp").write_bytes(b"nope")
    assert main(["info", str(tmp_path / "x.crisp")]) == 1
    assert "x.crisp" in capsys.readouterr().err
