"""Models named on the command line: in-project names, ``timm:NAME``, ``torchvision:NAME``,
``path/to/file.py:FACTORY`` and ``package.module:FACTORY``, plus state_dict weights files."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch
from torch import nn

from crisp.errors import ModelError
from crisp.models.registry import MODEL_NAMES, build, input_shape

SPEC_HELP = (f"model: an in-project name ({', '.join(MODEL_NAMES)}), timm:NAME, torchvision:NAME, "
             "path/to/file.py:FACTORY or package.module:FACTORY (FACTORY() returns an nn.Module)")
DEFAULT_INPUT = (3, 224, 224)


def _hub(prefix: str, name: str) -> nn.Module:
    try:
        lib = importlib.import_module(prefix if prefix == "timm" else "torchvision.models")
    except ImportError as exc:
        raise ModelError(f"--model {prefix}:{name} needs the {prefix} package: pip install {prefix}") from exc
    try:
        if prefix == "timm":
            return lib.create_model(name, pretrained=False)
        return lib.get_model(name, weights=None)
    except Exception as exc:  # unknown names raise their library's own errors
        raise ModelError(f"{prefix} cannot build model {name!r}: {exc}") from exc


def _module_from_file(path: Path) -> object:
    if not path.is_file():
        raise ModelError(f"model file {str(path)!r} does not exist")
    name = f"crisp_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelError(f"model file {str(path)!r} failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(path.parent))
    return module


def _factory(spec: str) -> nn.Module:
    where, _, factory = spec.rpartition(":")
    if not where or not factory:
        raise ModelError(f"--model {spec!r}: write path/to/file.py:FACTORY or package.module:FACTORY")
    if where.endswith(".py") or os.sep in where or "/" in where:
        module = _module_from_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ModelError(f"--model {spec!r}: cannot import module {where!r} ({exc}); is it installed or on PYTHONPATH?") from exc
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ModelError(f"--model {spec!r}: {where!r} has no callable {factory!r}")
    try:
        model = fn()
    except Exception as exc:
        raise ModelError(f"--model {spec!r}: {factory}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec!r}: {factory}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_model(spec: str, weights: str | os.PathLike | None = None, *, num_classes: int | None = None,
               seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """The model ``spec`` names (in eval mode) and its default (C, H, W) input shape; ``weights``
    is a state_dict file read with ``torch.load(weights_only=True)``."""
    prefix, _, rest = spec.partition(":")
    if not rest and spec.lower().replace("-", "_") in MODEL_NAMES + ("mobilenetv2",):
        model, shape = build(spec, num_classes=num_classes, seed=seed), input_shape(spec)
    elif prefix in ("timm", "torchvision") and rest:
        model, shape = _hub(prefix, rest), DEFAULT_INPUT
    elif rest:
        model, shape = _factory(spec), DEFAULT_INPUT
    else:
        raise ModelError(f"unknown model {spec!r}; {SPEC_HELP}")
    if weights is not None:
        load_weights(model, weights)
    return model.eval(), tuple(getattr(model, "input_shape", shape))


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state_dict file into ``model`` (``weights_only=True``: no code runs); ModelError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"weights file {str(p)!r} is not a state_dict torch.load(weights_only=True) can read: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {str(p)!r} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights file {str(p)!r} does not fit the model: {exc}") from exc


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> (1, 3, 224, 224); ModelError on anything else."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise ModelError(f"--input-shape {text!r}: write positive integers such as 1,3,224,224")
    return shape
