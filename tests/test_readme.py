"""The README's examples run: every fenced ```python block in order in one namespace, and every
``crisp`` line of the ```bash blocks through the real argument parser (and the fast ones for real).

To stay fast the examples run on the small CNN instead of ResNet-50: ``SMALLER`` lists each text
swapped in, and each must still be in the README, so an edited example cannot slip through
unchecked. ``SETUP`` gives a block the context it assumes (a weight and mask, a data loader, an
ONNX file). A block after a ``<!-- no-test -->`` line is skipped (for one that cannot run here).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from crisp.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
NO_TEST = "<!-- no-test -->"

# README text -> what runs instead (same API, a model that compiles in a second)
SMALLER = {
    'crisp.models.build("resnet50")': 'crisp.models.build("small_cnn")',
    "torch.randn(1, 3, 224, 224)": "torch.randn(1, 1, 8, 8)",
    'compiled.masks["layer1.0.conv1.weight"]': 'compiled.masks["conv2.weight"]',
}

# a text the block contains -> code run first, in the block's namespace
SETUP = {
    "HybridSparseTensor.from_dense(weight, mask": 'weight, mask = model.conv2.weight.detach(), compiled.masks["conv2.weight"]',
    "crisp.prune(model, train_loader": (
        "gen = torch.Generator().manual_seed(0)\n"
        "train_loader = [(torch.randn(8, 1, 8, 8, generator=gen), torch.tensor([3, 5, 1, 3, 5, 3, 5, 0]))]\n"
        "loader = train_loader\n"
        "recent_predictions = torch.tensor([3, 5, 3, 1, 5, 3] * 20)\n"
    ),
    'crisp.optimize_onnx("model.onnx"': (
        "torch.onnx.export(model, (x,), 'model.onnx', opset_version=17, dynamo=False, input_names=['input'])\n"
    ),
}

# shell lines: how a documented command runs fast here (the documented line is parsed as written)
SMALL_ARGS = {"--model resnet50": "--model small_cnn"}
DEMO_ARGS = ["--model", "small_cnn", "--block", "16"]
NOT_RUN = ("pip install", "pytest")  # the install itself and the whole suite


def fenced(language: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```language block not marked ``<!-- no-test -->``."""
    blocks = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", TEXT, flags=re.S | re.M):
        before = TEXT[: match.start()].rstrip().splitlines()
        if before and before[-1].strip() == NO_TEST:
            continue
        blocks.append((TEXT[: match.start()].count("\n") + 1, match.group(1)))
    return blocks


PYTHON = fenced("python")
SHELL = fenced("bash")


def test_the_substitutions_still_match_the_readme():
    python = "\n".join(code for _, code in PYTHON)
    missing = [text for text in [*SMALLER, *SETUP] if text not in python]
    assert not missing, f"README examples changed; update SMALLER/SETUP in this test: {missing}"
    assert PYTHON and SHELL


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    return {"__name__": "readme", "_cwd": tmp_path_factory.mktemp("readme")}


@pytest.mark.parametrize("line, code", PYTHON, ids=[f"line{n}" for n, _ in PYTHON])
def test_python_block_runs(line, code, namespace, monkeypatch):
    monkeypatch.chdir(namespace["_cwd"])
    for text, setup in SETUP.items():
        if text in code:
            exec(compile(setup, f"setup for README.md:{line}", "exec"), namespace)
    for text, small in SMALLER.items():
        code = code.replace(text, small)
    if "import" not in code.split("\n", 1)[0]:
        code = "import torch, crisp\n" + code
    exec(compile(code, f"README.md:{line}", "exec"), namespace)


def commands() -> list[tuple[int, str]]:
    """(line number, command) of each ``crisp`` command in the shell blocks, continuations joined."""
    out = []
    for line, code in SHELL:
        for text in code.replace("\\\n", " ").splitlines():
            for part in text.split("#")[0].split("&&"):
                part = " ".join(part.split())
                if part and not part.startswith(NOT_RUN) and part not in (c for _, c in out):
                    assert part.startswith("crisp"), f"README.md:{line}: unexpected shell line {part!r}"
                    out.append((line, part))
    return out


def documented_args(command: str) -> tuple[list[str], list[str]]:
    """The command's arguments with the optional ``[...]`` parts (their first alternative), and without them."""
    full, required, inside = [], [], False
    for token in shlex.split(command, comments=True)[1:]:
        opens = token.startswith("[")
        bare = token.strip("[]").split("|")[0]
        full.append(bare)
        if not (inside or opens):
            required.append(bare)
        inside = (inside or opens) and not token.endswith("]")
    return full, required


@pytest.mark.parametrize("line, command", commands(), ids=[c for _, c in commands()])
def test_shell_command_parses_and_runs(line, command, tmp_path, monkeypatch, capsys):
    full, args = documented_args(command)
    if full and full[0] != "--help":
        build_parser().parse_args(full)  # every documented flag exists
    monkeypatch.chdir(tmp_path)
    if args[:1] == ["--help"]:
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0 and "COMMAND" in capsys.readouterr().out
        return
    run = " ".join(args)
    for text, small in SMALL_ARGS.items():
        run = run.replace(text, small)
    run_args = run.split() + (DEMO_ARGS if args == ["demo"] else [])
    if run_args[0] == "optimize":
        from crisp.models import build

        torch.onnx.export(build("small_cnn"), (torch.randn(1, 1, 8, 8),), run_args[1], opset_version=17, dynamo=False)
    assert main(run_args) == 0, f"README.md:{line}: {command}"


INLINE = sorted(set(re.findall(r"`(crisp [a-z][^`]*)`", TEXT.replace("\n", " "))))


@pytest.mark.parametrize("command", INLINE)
def test_inline_commands_parse(command):
    build_parser().parse_args(documented_args(command)[0])
