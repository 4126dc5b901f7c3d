"""Declared dependencies are exactly the imported ones, and a command whose extra is missing says
which ``pip install 'crisp[...]'`` brings it."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DISTRIBUTION = {"sklearn": "scikit-learn", "onnx_graphsurgeon": "onnx-graphsurgeon", "google": "protobuf", "PIL": "pillow"}
TOOLS = {"ninja"}  # run by torch.utils.cpp_extension, never imported


def _name(requirement: str) -> str:
    for sep in "<>=[ ;":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower()


def _imported() -> set[str]:
    folders = PYPROJECT["tool"]["setuptools"]["package-dir"].values()
    found = set()
    for path in {f for folder in folders for f in (ROOT / folder).glob("*.py")}:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    third_party = found - set(sys.stdlib_module_names) - {"crisp", "__future__"}
    return {DISTRIBUTION.get(m, m) for m in third_party}


def test_declared_dependencies_are_exactly_the_imported_ones():
    extras = PYPROJECT["project"]["optional-dependencies"]
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = {_name(r) for key in ("digits", "bench", "plot", "images") for r in extras[key]}
    assert _imported() == (core | optional) - TOOLS
    assert not core & optional


def test_the_dev_extra_brings_every_extra_and_the_test_tools():
    dev = PYPROJECT["project"]["optional-dependencies"]["dev"]
    assert "crisp[digits,bench,plot,images]" in dev
    assert {"pytest", "hypothesis", "import-linter"} <= {_name(r) for r in dev}


def test_prune_names_the_digits_extra_when_scikit_learn_is_missing(monkeypatch, capsys):
    from crisp.cli import main
    from crisp.tasks import digits_data

    digits_data._arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        assert main(["prune", "--classes", "3", "8", "--quiet"]) == 1
    finally:
        digits_data._arrays.cache_clear()
    assert "pip install 'crisp[digits]'" in capsys.readouterr().err


def test_bench_names_the_bench_extra_when_scipy_is_missing(monkeypatch, capsys):
    from crisp.bench import cpu_peers
    from crisp.cli import main

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    assert cpu_peers.scipy_sparse() is None
    assert main(["bench", "--model", "small_cnn", "--block", "16", "--sparsity", "0.8", "--threads", "1",
                 "--methods", "torch_dense,scipy_bsr", "--no-per-layer", "--budget", "0.01"]) == 0
    assert "pip install 'crisp[bench]'" in capsys.readouterr().out


def test_plots_name_the_plot_extra_when_matplotlib_is_missing(monkeypatch):
    from crisp.runtime.simulator.errors import SimulationInputError
    from crisp.runtime.simulator.plot import plot_comparison

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SimulationInputError, match=r"pip install 'crisp\[plot\]'"):
        plot_comparison(None, "unused.png")
