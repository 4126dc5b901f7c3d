"""``crisp.simulate`` and ``crisp.compare_archs``: run compiled models on accelerator models.

``simulate(source, arch)`` accepts a :class:`~crisp.backends.stc_trace.Trace`, a trace file, a
compiled model (anything with ``.layers``; its ``artifacts["trace"]`` is used when present) or
a list of :class:`~crisp.ir.layer_info.LayerInfo`, and returns a
:class:`~crisp.runtime.simulator.SimulationResult`: per-layer and total cycles, energy in uJ
by component, utilization and the bound of each layer.
"""

from __future__ import annotations

import os
from typing import Iterable

from crisp.backends.stc_trace import Trace
from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.engine import simulate_specs
from crisp.runtime.simulator.errors import ArchError, SimulationInputError
from crisp.runtime.simulator.arch_io import get_arch
from crisp.runtime.simulator.presets import DEFAULT_COMPARISON
from crisp.runtime.simulator.result import Comparison, SimulationResult
from crisp.runtime.simulator.workload import LayerSpec, specs_from_layers


def _trace_of(source):
    if isinstance(source, Trace):
        return source
    if isinstance(source, (str, os.PathLike)):
        return Trace.load(source)
    artifacts = getattr(source, "artifacts", None)
    if isinstance(artifacts, dict) and isinstance(artifacts.get("trace"), Trace):
        return artifacts["trace"]
    return None


def _specs_of(source) -> list[LayerSpec]:
    trace = _trace_of(source)
    if trace is not None:
        return trace.specs
    layers = getattr(source, "layers", source)
    if isinstance(layers, (list, tuple)):
        return specs_from_layers(list(layers))
    raise SimulationInputError(
        f"cannot simulate a {type(source).__name__}: pass a compiled model (crisp.compile(...)), its .layers, "
        "a Trace, or the path of a saved trace file"
    )


def simulate(source, arch: "Arch | str" = "crisp-stc", *, strict: bool = False) -> SimulationResult:
    """Replay ``source`` on ``arch`` (a preset name such as ``"crisp-stc"``, ``"nvidia-stc"``,
    ``"dstc"``, ``"tc"``, a ``.toml``/``.json`` file, or an :class:`Arch`).

    Layers whose N:M pattern the architecture cannot run are simulated as it would run them
    (denser, or dense) with a :class:`PatternFallbackWarning`; ``strict=True`` raises instead.
    """
    target = get_arch(arch)
    trace = _trace_of(source)
    if trace is not None:
        return trace.simulate(target, strict=strict)
    return simulate_specs(_specs_of(source), target, strict=strict)


def compare_archs(source, archs: Iterable["Arch | str"] = DEFAULT_COMPARISON, *, baseline: "Arch | str" = "tc",
                  strict: bool = False) -> Comparison:
    """Simulate ``source`` on several architectures; speedup and energy efficiency are over
    ``baseline`` (which is added when missing). Compare designs that share hardware (the
    presets do) or the ratios mix design and resources."""
    specs = _specs_of(source)
    targets = [get_arch(a) for a in archs]
    base = get_arch(baseline)
    if base.name not in [t.name for t in targets]:
        targets.append(base)
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ArchError(f"architectures must have distinct names to compare, got {names}")
    results = {t.name: simulate_specs(specs, t, strict=strict) for t in targets}
    return Comparison(results=results, baseline=base.name)
