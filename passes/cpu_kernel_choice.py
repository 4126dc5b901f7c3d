"""Per-layer kernel choice of the cpu target by measurement: each candidate (the channel-vector
and rows sparse kernels, and the dense path: the same layer with every weight kept) is timed on
the layer's real input shape on the active ISA path, the fastest is kept, and the verdict is cached
on disk by (layer shape, pattern, density, ISA, threads) so a later compile is instant and makes
the same choice."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from crisp.fileio import atomic_write_text
from crisp.runtime import fast_kernel
from crisp.runtime.packed_weight import ChannelPackedWeight, PackedHybridWeight
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern

from crisp.passes.cpu_common import pack

TUNE_ENV = "CRISP_CPU_TUNE"  # "0": no measurement, the rule (channel kernel where it fits, else rows)
BUDGET_ENV = "CRISP_CPU_TUNE_BUDGET"  # seconds of measurement per compile (default 5)
DEFAULT_BUDGET_S = 5.0
CACHE_VERSION = 1
_RUNS, _RUN_BUDGET_S = 5, 0.05  # timed runs per candidate, at most, and seconds per candidate


def dense_pattern(k: int) -> Pattern:
    """Every weight kept: how a dense conv runs on the sparse kernels. Blocks of 32 (two row
    vectors share each input load) unless that would pad K."""
    return Pattern(4, 4, 32 if k % 32 == 0 else 16)


def candidates(compact: HybridSparseTensor, in_channels: int, conv: bool) -> dict[str, object]:
    """Every kernel that can run this layer, by name: ``channel``, ``rows`` and (convs) ``dense``."""
    found: dict[str, object] = {}
    if conv and ChannelPackedWeight.supports(compact, in_channels, fast_kernel.channel_max_m()):
        found["channel"] = ChannelPackedWeight.from_compact(compact, in_channels)
    found["rows"] = PackedHybridWeight.from_compact(compact)
    if conv:
        weight = compact.to_dense().float()
        full = HybridSparseTensor.from_dense(weight, torch.ones_like(weight, dtype=torch.bool),
                                             dense_pattern(weight[0].numel()))
        found["dense"] = pack(full, in_channels, True)
    return found


@dataclass
class Choice:
    kernel: str  # channel | rows | dense
    packed: object
    reason: str
    times_ms: dict[str, float] = field(default_factory=dict)


def cache_path() -> Path:
    """The on-disk verdicts: ``<crisp cache dir>/kernel_choices.json``."""
    return fast_kernel.cache_dir() / "kernel_choices.json"


class _Cache:
    lock = threading.Lock()
    loaded: dict[str, dict] = {}
    stamp: tuple | None = None  # (path, mtime, size) of what `loaded` holds


def _load() -> dict[str, dict]:
    """The cached verdicts, re-read whenever the file changed (another process may have written it)."""
    path = cache_path()
    try:
        st = path.stat()
        stamp = (path, st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (path, None, None)
    if stamp != _Cache.stamp:
        try:
            _Cache.loaded = json.loads(path.read_text()) if stamp[1] is not None else {}
        except (OSError, ValueError):
            _Cache.loaded = {}  # an unreadable cache is measured again and rewritten
        _Cache.stamp = stamp
    return _Cache.loaded


def _store(key: str, verdict: dict) -> None:
    with _Cache.lock:
        cache = _load()
        cache = {**cache, key: verdict}
        try:
            atomic_write_text(cache_path(), json.dumps(cache, indent=0, sort_keys=True), parents=True)
        except OSError:
            pass  # a read-only cache dir: the choice still holds for this compile
        _Cache.loaded, _Cache.stamp = cache, None


def layer_key(compact: HybridSparseTensor, x_shape: tuple, geometry: tuple, kind: str) -> str:
    """(layer shape, input shape, geometry, pattern, density, ISA, threads) as a short hash."""
    density = round(compact.num_values / max(1, compact.shape[0] * compact.shape[1]), 4)
    parts = [CACHE_VERSION, kind, list(compact.weight_shape), list(x_shape), [list(g) if isinstance(g, (list, tuple)) else g
             for g in geometry], str(compact.pattern), density, fast_kernel.cpu_capability(), torch.get_num_threads()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _median_ms(call) -> float:
    call()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < _RUNS and (not times or time.perf_counter() - start < _RUN_BUDGET_S):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1e3)
    return min(times)  # the least disturbed run: robust to another process taking the core


class Tuner:
    """Chooses the kernel of each layer of one compile within the compile's measurement budget."""

    def __init__(self) -> None:
        self.measure = os.environ.get(TUNE_ENV, "1") not in ("0", "")
        self.budget_s = float(os.environ.get(BUDGET_ENV, DEFAULT_BUDGET_S))
        self.spent_s = 0.0

    def choose(self, compact: HybridSparseTensor, in_channels: int, kind: str, x_shape: tuple | None,
               geometry: tuple, bias: torch.Tensor | None) -> Choice:
        conv = kind == "conv"
        if not self.measure or x_shape is None:
            why = f"{TUNE_ENV}=0" if not self.measure else "input shape unknown"
            packed = pack(compact, in_channels, conv)
            return Choice(_kind(packed), packed, f"rule ({why}): channel kernel where it fits, else rows")
        options = candidates(compact, in_channels, conv)
        key = layer_key(compact, x_shape, geometry, kind)
        cached = _load().get(key)
        if cached is not None and cached.get("kernel") in options:
            return Choice(cached["kernel"], options[cached["kernel"]], "cached measurement: " + _times(cached["times_ms"]),
                          cached["times_ms"])
        if self.spent_s >= self.budget_s:
            packed = pack(compact, in_channels, conv)
            return Choice(_kind(packed), packed, f"rule (measurement budget of {self.budget_s:g} s spent)")
        start = time.perf_counter()
        x = torch.randn(x_shape).contiguous(memory_format=torch.channels_last) if conv else torch.randn(x_shape)
        times = {}
        with torch.no_grad():
            for name, packed in options.items():
                if conv:
                    times[name] = _median_ms(lambda p=packed: fast_kernel.conv2d(x, p, bias, *geometry, channels_last=True))
                else:
                    times[name] = _median_ms(lambda p=packed: fast_kernel.linear(x, p, bias))
        self.spent_s += time.perf_counter() - start
        best = min(times, key=times.__getitem__)
        times = {k: round(v, 4) for k, v in times.items()}
        _store(key, {"kernel": best, "times_ms": times})
        return Choice(best, options[best], "measured: " + _times(times), times)


def _kind(packed) -> str:
    return "channel" if isinstance(packed, ChannelPackedWeight) else "rows"


def _times(times: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
