"""Source files stay small and documented: at most 400 lines a file, 80 lines a function, a docstring per module."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def source_files() -> list[Path]:
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders = [*package_dir.values(), "benchmarks"]
    return sorted({f for folder in folders for f in (ROOT / folder).glob("*.py")})


FILES = source_files()


def test_every_package_folder_is_found():
    assert len(FILES) > 50


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_file_is_small_and_documented(path):
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.name} has {lines} lines (at most {MAX_FILE_LINES})"
    tree = ast.parse(text)
    assert ast.get_docstring(tree), f"{path.name} has no module docstring saying its role"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {path.name}: {', '.join(long)}"
