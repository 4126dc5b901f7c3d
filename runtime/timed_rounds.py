"""Interleaved timing: several zero-argument calls timed in rounds, each call once a round (or for a
slot of runs), so that a burst of load from another process hits all of them alike. The one loop
behind the cpu target's kernel choice, the ONNX per-layer body choice and ``crisp.bench.timing``."""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Sequence

Call = Callable[[], object]


def timed_rounds(calls: Mapping[str, Call], *, rounds: int, min_rounds: int = 0, budget_s: float = math.inf,
                 clock: Callable[[], float] | None = None, slot_runs: int = 1, slot_s: float = 0.0,
                 between: Mapping[str, Sequence[Call]] | None = None, warmup: Sequence[Call] | None = None,
                 score: Callable[[str, list[float]], float] | None = None,
                 drop: float = math.inf) -> dict[str, list[float]]:
    """Milliseconds (by ``clock``, default ``time.perf_counter``) of every timed run of each call, by name.

    First one warm-up run of each call (or of each of ``warmup``, where given). Then up to
    ``rounds`` rounds, fewer once ``min_rounds`` are done and ``budget_s`` seconds (wall clock) have
    passed since the warm-up. In a round each call still in the race runs in turn, for a slot of at
    least ``slot_runs`` runs and ``slot_s`` seconds; the calls in ``between[name]`` run, untimed,
    before each of ``name``'s runs. With ``score`` (name, its times -> its time), a call whose score
    is over ``drop`` x the best leaves the race after each round from ``min_rounds`` on."""
    between, clock = between or {}, clock or time.perf_counter
    for call in (calls.values() if warmup is None else warmup):
        call()
    runs: dict[str, list[float]] = {name: [] for name in calls}
    racing = list(calls)
    start = time.perf_counter()
    for r in range(rounds):
        if r >= min_rounds and time.perf_counter() - start > budget_s:
            break
        for name in racing:
            _slot(calls[name], between.get(name, ()), runs[name], clock, slot_runs, slot_s)
        if score is not None and r + 1 >= min_rounds:
            best = min(score(name, runs[name]) for name in racing)
            racing = [name for name in racing if score(name, runs[name]) <= drop * best]
    return runs


def _slot(call: Call, before: Sequence[Call], times: list[float], clock: Callable[[], float], runs: int,
          seconds: float) -> None:
    """``call`` timed at least ``runs`` times and for ``seconds`` (the untimed ``before`` calls included)."""
    start = time.perf_counter()
    count = 0
    while count < runs or time.perf_counter() - start < seconds:
        for fn in before:
            fn()
        t0 = clock()
        call()
        times.append((clock() - t0) * 1e3)
        count += 1
