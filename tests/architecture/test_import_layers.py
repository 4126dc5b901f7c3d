"""The import contracts in ``.importlinter`` hold: stages import downward only, the core never imports onnx.

crisp's subpackages live in several top-level folders (``pyproject.toml`` maps them with ``package-dir``),
which import-linter cannot follow, so the test assembles the package as installed into a temporary
folder and lints that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def assemble_package(dest: Path) -> None:
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(package_dir.items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).glob("*.py"):
            shutil.copy2(source, target / source.name)


def lint(package_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    script = ("import sys; from importlinter.cli import lint_imports; "
              f"sys.exit(lint_imports(config_filename={str(ROOT / '.importlinter')!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", script], cwd=package_root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_contracts_hold(tmp_path):
    pytest.importorskip("importlinter")
    assemble_package(tmp_path)
    run = lint(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_contracts_catch_an_upward_import(tmp_path):
    """The check can fail: a runtime module that imports the compile API breaks the contract."""
    pytest.importorskip("importlinter")
    assemble_package(tmp_path)
    (tmp_path / "crisp" / "runtime" / "upward.py").write_text('"""Test-only upward import."""\nimport crisp.api\n')
    run = lint(tmp_path)
    assert run.returncode != 0
    assert "crisp.runtime.upward" in run.stdout
