"""Backends register by name; ``crisp.compile(target=...)`` resolves through this registry.

A backend is a callable ``backend(lowered: BackendInput) -> BackendOutput``. It receives the
lowered graph module (after the default pipeline) and the per-layer :class:`LayerInfo` list,
and returns the module to run plus any artifacts it produced (e.g. an instruction trace).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from crisp.errors import UnknownTargetError
from crisp.ir.layer_info import LayerInfo


@dataclass
class BackendInput:
    graph_module: torch.fx.GraphModule
    layers: list[LayerInfo]
    example_inputs: tuple
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BackendOutput:
    module: torch.nn.Module
    artifacts: dict[str, Any] = field(default_factory=dict)


Backend = Callable[[BackendInput], BackendOutput]
_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, backend: Backend | None = None):
    """Register ``backend`` under ``name``; usable as a decorator."""

    def add(fn: Backend) -> Backend:
        _BACKENDS[name] = fn
        return fn

    return add if backend is None else add(backend)


def registered_backends() -> list[str]:
    _load_builtin()
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    _load_builtin()
    if name not in _BACKENDS:
        raise UnknownTargetError(
            f"unknown target {name!r}; registered targets: {', '.join(sorted(_BACKENDS))}"
        )
    return _BACKENDS[name]


_BUILTIN_MODULES = ("reference", "cpu", "onnx_backend", "stc_backend")


def _load_builtin() -> None:
    """Import the built-in backend modules that exist (each registers itself)."""
    import importlib

    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(f"crisp.backends.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"crisp.backends.{mod}":
                raise
