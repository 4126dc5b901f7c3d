"""Per-layer kernel choice of the cpu target by measurement: each candidate (the channel-vector
and rows sparse kernels, for convs and Linear layers alike, for convs crisp's dense GEMM kernel on the whole weight, and the dense
path: torch's own conv / linear on the whole BN-folded weight) is timed on the layer's real input
shape on the active ISA path, the fastest is kept, and the verdict is cached on disk by (layer
shape, epilogue, input layout, pattern, density, ISA, threads) so a later compile is instant and
makes the same choice.
Layers left dense choose between crisp's kernels with every weight kept and torch's conv the same way.

Each candidate is timed as the compiled graph will run it (:class:`Context`): with the layer's
fused epilogue (a residual add and ReLU / ReLU6, which crisp's kernels fuse and torch's path runs
as separate passes) and on the input layout the layer receives (the model's own NCHW input for a
stem conv, channels-last after crisp's ops). Timed without them, MobileNetV2's stem chose torch's
conv at 0.37 ms against crisp's 0.48 ms, and then cost 0.69 ms in the model with its layout copy
and ReLU6 pass; timed in context it runs on crisp's GEMM kernel, and the model ran 4 % faster
(median of 40 alternating rounds in one process, 2 threads, 2-vCPU AMD EPYC)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from crisp.fileio import atomic_write_text
from crisp.ir.conv_geometry import conv_out_size
from crisp.runtime import dense_path, fast_kernel
from crisp.runtime.channel_linear import channel_linear
from crisp.runtime.packed_weight import ChannelPackedWeight, DenseWeight, GemmPackedWeight, PackedHybridWeight
from crisp.runtime.timed_rounds import timed_rounds
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern

from crisp.passes.cpu_common import layout, pack

TUNE_ENV = "CRISP_CPU_TUNE"  # "0": no measurement, the rule (channel kernel where it fits, else rows)
BUDGET_ENV = "CRISP_CPU_TUNE_BUDGET"  # seconds of measurement per compile (default 5)
DEFAULT_BUDGET_S = 5.0
CACHE_VERSION = 6  # 6: Linear layers on the channel kernel a candidate; 5: timed with the layer's epilogue and input layout; 4: crisp's dense GEMM kernel a candidate; 3: torch's dense op on one thread, AVX2 kernels rebuilt; 2: "dense" is torch's conv / linear
_RUNS, _MIN_RUNS, _RUN_BUDGET_S, _DROP = 7, 3, 0.05, 3.0  # timed rounds (at most, at least), seconds per candidate
DENSE_MARGIN = 0.9  # torch's dense path must take at most this share of crisp's best time
INF = math.inf


def dense_pattern(k: int) -> Pattern:
    """Every weight kept: how a dense conv runs on the sparse kernels. Blocks of 32 (two row
    vectors share each input load) unless that would pad K."""
    return Pattern(4, 4, 32 if k % 32 == 0 else 16)


def candidates(compact: HybridSparseTensor, in_channels: int, conv: bool) -> dict[str, object]:
    """Every kernel that can run this pruned layer, by name: ``channel`` (convs and Linear layers
    whose groups fit), ``rows``, ``gemm`` (convs: crisp's dense kernel on the whole weight) and
    ``dense`` (torch's conv / linear on the whole weight)."""
    found: dict[str, object] = {}
    if ChannelPackedWeight.supports(compact, in_channels, fast_kernel.channel_max_m()):
        found["channel"] = ChannelPackedWeight.from_compact(compact, in_channels)
    found["rows"] = PackedHybridWeight.from_compact(compact)
    dense = compact.to_dense()
    if conv:
        found["gemm"] = GemmPackedWeight.from_dense(dense)
    found["dense"] = DenseWeight.from_dense(dense)
    return found


def dense_candidates(weight: torch.Tensor, in_channels: int) -> dict[str, object]:
    """The kernels that can run a conv left dense: crisp's (the sparse kernels with every weight
    kept, and its dense GEMM kernel) and torch's."""
    weight = weight.detach().float()
    full = HybridSparseTensor.from_dense(weight, torch.ones_like(weight, dtype=torch.bool), dense_pattern(weight[0].numel()))
    packed = pack(full, in_channels)
    return {layout(packed): packed, "gemm": GemmPackedWeight.from_dense(weight), "dense": DenseWeight.from_dense(weight)}


@dataclass(frozen=True)
class Context:
    """What surrounds a layer in the compiled graph, which its candidates are timed with: the
    fused epilogue (a same-shape residual add, then a clamp: ReLU is (0, inf), ReLU6 (0, 6)) and
    whether its input arrives channels-last (crisp's ops' outputs) or NCHW (the model's input)."""

    residual: bool = False
    clamp: tuple[float, float] = (-INF, INF)
    channels_last_input: bool = True

    def key(self) -> list:
        return [self.residual, [str(v) for v in self.clamp], self.channels_last_input]


def run_candidate(packed, x: torch.Tensor, bias: torch.Tensor | None, geometry: tuple, conv: bool,
                  residual: torch.Tensor | None = None, clamp: tuple[float, float] = (-INF, INF)) -> torch.Tensor:
    """One candidate on input ``x`` as the compiled graph calls it (conv outputs channels-last),
    with the epilogue ``clamp(y + residual)``; ``geometry``: (kernel, stride, padding, dilation) of a conv."""
    lo, hi = clamp
    if isinstance(packed, DenseWeight):
        if conv:
            return dense_path.conv2d(x, packed.weight, bias, residual, *geometry[1:], lo, hi)
        return dense_path.linear(x, packed.weight, bias, lo, hi)
    relu, clamp_max = lo > -INF, (None if hi == INF else hi)
    if not conv and isinstance(packed, ChannelPackedWeight):
        return channel_linear(x, packed, bias, relu=relu, clamp_max=clamp_max)
    if conv:
        return fast_kernel.conv2d(x, packed, bias, *geometry, relu=relu, clamp_max=clamp_max, residual=residual,
                                  channels_last=True)
    return fast_kernel.linear(x, packed, bias, relu=relu, clamp_max=clamp_max)


@dataclass
class Choice:
    kernel: str  # channel | rows | gemm | dense
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


def layer_key(weight_shape: tuple, pattern: str, density: float, x_shape: tuple, geometry: tuple, kind: str,
              context: Context = Context()) -> str:
    """(layer shape, input shape, geometry, pattern, density, context, ISA, threads) as a short hash."""
    parts = [CACHE_VERSION, kind, list(weight_shape), list(x_shape), [list(g) if isinstance(g, (list, tuple)) else g
             for g in geometry], pattern, round(density, 4), context.key(), fast_kernel.cpu_capability(),
             torch.get_num_threads()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def time_candidates(calls: dict[str, object], fork_join: tuple[str, ...] = ("dense",)) -> dict[str, float]:
    """The time (ms) of each call: one warm-up each, then rounds that run every call still in the
    race once, so that a burst of load from another process hits all of them alike; a call over
    ``_DROP`` x the best leaves the race (it cannot win). At least ``_MIN_RUNS`` rounds, then more
    while within ``_RUN_BUDGET_S`` per candidate, up to ``_RUNS``. crisp's kernels count their
    least disturbed run (their pool never waits for a helper that has not started, so that is
    what they take); the ``fork_join`` candidates (torch's pool, whose barrier waits for a
    descheduled thread and then loses a whole time slice) their median, which the compiled model
    sees too."""
    def stat(name: str, times: list[float]) -> float:
        return statistics.median(times) if name in fork_join else min(times)

    runs = timed_rounds(calls, rounds=_RUNS, min_rounds=_MIN_RUNS, budget_s=_RUN_BUDGET_S * len(calls), score=stat,
                        drop=_DROP)
    return {name: stat(name, times) for name, times in runs.items()}


def pick(times: dict[str, float]) -> str:
    """The fastest candidate; torch's dense path only when it beats crisp's best by ``DENSE_MARGIN``
    (between two crisp layers it also wakes a second thread pool, which a lone timing does not see)."""
    best = min(times, key=times.__getitem__)
    sparse = [name for name in times if name != "dense"]
    if best == "dense" and sparse:
        crisp_best = min(sparse, key=times.__getitem__)
        if times["dense"] > DENSE_MARGIN * times[crisp_best]:
            return crisp_best
    return best


class Tuner:
    """Chooses the kernel of each layer of one compile within the compile's measurement budget."""

    def __init__(self) -> None:
        self.measure = os.environ.get(TUNE_ENV, "1") not in ("0", "")
        self.budget_s = float(os.environ.get(BUDGET_ENV, DEFAULT_BUDGET_S))
        self.spent_s = 0.0

    def choose(self, compact: HybridSparseTensor, in_channels: int, kind: str, x_shape: tuple | None,
               geometry: tuple, bias: torch.Tensor | None, context: Context = Context()) -> Choice:
        """The kernel of a pruned layer (rule: the channel kernel where it fits, else rows)."""
        conv = kind == "conv"
        density = compact.num_values / max(1, compact.shape[0] * compact.shape[1])
        key = layer_key(compact.weight_shape, str(compact.pattern), density, x_shape or (), geometry, kind, context)
        return self._choose(lambda: candidates(compact, in_channels, conv), lambda: pack(compact, in_channels),
                            key, conv, x_shape, geometry, bias, context)

    def choose_dense(self, weight: torch.Tensor, kind: str, x_shape: tuple | None, geometry: tuple,
                     bias: torch.Tensor | None, context: Context = Context()) -> Choice:
        """The kernel of a conv left dense (rule: crisp's kernels with every weight kept)."""
        options = dense_candidates(weight, weight.shape[1])
        key = layer_key(tuple(weight.shape), "dense", 1.0, x_shape or (), geometry, kind, context)
        return self._choose(lambda: options, lambda: next(iter(options.values())), key, True, x_shape, geometry, bias,
                            context)

    def _choose(self, options_of, rule, key: str, conv: bool, x_shape: tuple | None, geometry: tuple,
                bias: torch.Tensor | None, context: Context) -> Choice:
        if not self.measure or x_shape is None:
            why = f"{TUNE_ENV}=0" if not self.measure else "input shape unknown"
            packed = rule()
            return Choice(layout(packed), packed, f"rule ({why}): crisp's kernel, channel layout where it fits, else rows")
        options = options_of()

        def calls() -> dict:
            x = torch.randn(x_shape)
            if conv and context.channels_last_input:
                x = x.contiguous(memory_format=torch.channels_last)
            residual = None
            if context.residual:  # a conv's residual: the output's shape, channels-last like crisp's outputs
                rows = options["dense"].weight.shape[0]
                size = [conv_out_size(n, k, s, d, p) for n, k, s, p, d in zip(x_shape[2:], *geometry)]
                residual = torch.randn(x_shape[0], rows, *size).contiguous(memory_format=torch.channels_last)
            return {name: (lambda p=packed: run_candidate(p, x, bias, geometry, conv, residual, context.clamp))
                    for name, packed in options.items()}

        kernel, reason, times = self.verdict(key, tuple(options), calls, next(iter(options)))
        return Choice(kernel, options[kernel], reason, times)

    def verdict(self, key: str, names: tuple[str, ...], make_calls, rule: str) -> tuple[str, str, dict[str, float]]:
        """One decision between the candidates ``names``: (the one kept, why, the times in ms). The
        cached verdict under ``key`` if there is one; ``rule`` once the budget is spent (or with
        measurement off); else the fastest of ``make_calls()`` (name -> a call that runs it), stored."""
        if not self.measure:
            return rule, f"rule ({TUNE_ENV}=0)", {}
        cached = _load().get(key)
        if cached is not None and cached.get("kernel") in names:
            return cached["kernel"], "cached measurement: " + _times(cached["times_ms"]), cached["times_ms"]
        if self.spent_s >= self.budget_s:
            return rule, f"rule (measurement budget of {self.budget_s:g} s spent)", {}
        start = time.perf_counter()
        with torch.no_grad():
            times = time_candidates(make_calls())
        self.spent_s += time.perf_counter() - start
        times = {k: round(v, 4) for k, v in times.items()}
        best = pick(times)
        _store(key, {"kernel": best, "times_ms": times})
        return best, "measured: " + _times(times), times


def _times(times: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
