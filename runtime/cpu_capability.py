"""Which vector ISA path of crisp's CPU kernels this machine can run and which one is in use:
``avx512``, ``avx2`` (AVX2 + FMA) or ``default`` (portable), detected from the CPU's features and
overridable with ``CRISP_CPU_CAPABILITY`` (like PyTorch's ``ATEN_CPU_CAPABILITY``)."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings
from typing import Iterator

import torch

CAPABILITY_ENV = "CRISP_CPU_CAPABILITY"
CAPABILITIES = ("avx512", "avx2", "default")  # best first

# What each x86 build is compiled for (-march) and the CPU flags (/proc/cpuinfo names) it needs.
X86_MARCH = {"avx512": "x86-64-v4", "avx2": "x86-64-v3", "default": "x86-64"}
_V3 = {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm"}
REQUIRED_FLAGS = {"avx512": _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}, "avx2": _V3, "default": set()}


class CpuCapabilityWarning(RuntimeWarning):
    """``CRISP_CPU_CAPABILITY`` asked for a path this CPU (or crisp) cannot run; crisp uses another."""


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``), empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def supported() -> tuple[str, ...]:
    """The paths this CPU can run, best first (``default`` always)."""
    if not is_x86():
        return ("default",)
    flags = cpu_flags()
    if not flags:  # no /proc/cpuinfo (macOS, Windows): trust torch's own detection
        torch_cap = torch.backends.cpu.get_cpu_capability().lower()
        found = {"avx512": ("avx512",), "avx2": ("avx2",)}.get(torch_cap, ())
        return (*found, *(("avx2",) if torch_cap == "avx512" else ()), "default")
    return tuple(c for c in CAPABILITIES if REQUIRED_FLAGS[c] <= flags)


def _warn(message: str) -> None:
    warnings.warn(message, CpuCapabilityWarning, stacklevel=4)


_warned: set[str] = set()


def active() -> str:
    """The path in use: ``$CRISP_CPU_CAPABILITY`` where this CPU runs it, else the best one it runs
    (one :class:`CpuCapabilityWarning` per refused value)."""
    best = supported()[0]
    asked = os.environ.get(CAPABILITY_ENV, "").strip().lower()
    if not asked:
        return best
    if asked not in CAPABILITIES:
        if asked not in _warned:
            _warned.add(asked)
            _warn(f"crisp: {CAPABILITY_ENV}={asked!r} is not a crisp CPU path (use one of {', '.join(CAPABILITIES)}); "
                  f"using {best!r}")
        return best
    if asked not in supported():
        if asked not in _warned:
            _warned.add(asked)
            _warn(f"crisp: {CAPABILITY_ENV}={asked} is refused: this CPU ({cpu_model()}) lacks the needed features "
                  f"({', '.join(sorted(REQUIRED_FLAGS[asked] - cpu_flags())) or 'not x86'}); it runs "
                  f"{', '.join(supported())}; using {best!r}")
        return best
    return asked


@contextlib.contextmanager
def forced(capability: str) -> Iterator[str]:
    """Run the block with ``CRISP_CPU_CAPABILITY=capability`` (for tests and benchmarks); yields the
    path that is then active."""
    old = os.environ.get(CAPABILITY_ENV)
    os.environ[CAPABILITY_ENV] = capability
    try:
        yield active()
    finally:
        if old is None:
            os.environ.pop(CAPABILITY_ENV, None)
        else:
            os.environ[CAPABILITY_ENV] = old


def compile_flags(capability: str) -> tuple[str, ...]:
    """The C++ flags of one path's build (its op namespace is ``crisp_<capability>``)."""
    arch = (f"-march={X86_MARCH[capability]}", "-mtune=generic") if is_x86() else ()
    return ("-O3", *arch, "-fopenmp", f"-DCRISP_NS=crisp_{capability}")
