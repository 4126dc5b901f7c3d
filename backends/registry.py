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
_OPTIONS: dict[str, tuple[str, ...] | None] = {}


def register_backend(name: str, backend: Backend | None = None, *, options: tuple[str, ...] | None = None):
    """Register ``backend`` under ``name``; usable as a decorator. ``options`` names the keyword
    options it reads from ``crisp.compile(**options)`` (others are refused); None accepts any."""

    def add(fn: Backend) -> Backend:
        _BACKENDS[name] = fn
        _OPTIONS[name] = None if options is None else tuple(options)
        return fn

    return add if backend is None else add(backend)


def registered_backends() -> list[str]:
    return sorted(_BACKENDS)


def backend_options(name: str) -> tuple[str, ...] | None:
    """The keyword options backend ``name`` declared (None: it declared none and accepts any)."""
    return _OPTIONS.get(name)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UnknownTargetError(
            f"unknown target {name!r}; registered targets: {', '.join(sorted(_BACKENDS))}"
        )
    return _BACKENDS[name]
