"""Wall-clock timing of zero-argument runners: medians after warm-up, with the process CPU time beside them."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from crisp.runtime.timed_rounds import timed_rounds


@dataclass
class Timing:
    median_ms: float  # wall clock
    min_ms: float
    runs: int
    cpu_median_ms: float = float("nan")  # CPU time of the whole process per run (all threads)
    times_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return asdict(self)


def measure(run: Callable[[], object], *, warmup: int = 2, min_runs: int = 5, max_runs: int = 50,
            budget_s: float = 3.0) -> Timing:
    """Median wall time of ``run()`` over at least ``min_runs`` runs (more while within ``budget_s``),
    and the median process CPU time per run (with one thread, the time the run would take on an
    idle core; the machine these numbers come from is shared)."""
    slow = False
    for _ in range(warmup):
        t0 = time.perf_counter()
        run()
        slow = slow or time.perf_counter() - t0 > budget_s
    if slow:  # one run already exceeds the budget (e.g. the reference kernel at batch 8): time a few
        min_runs = min(min_runs, 2)
    times: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        c0, t0 = time.process_time(), time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return Timing(statistics.median(times), min(times), len(times), statistics.median(cpu), times)


def interleaved(run: Callable[[], object], others: dict[str, Callable[[], object]], *, rounds: int = 3,
                budget_s: float = 2.0) -> dict:
    """``run`` timed alone and with ``others`` run between its calls in the same loop (their thread
    pools wake and spin between two of ``run``'s calls), in alternating phases so that both see the
    same machine: {"alone_ms", "interleaved_ms" (medians of ``run``'s own time), "ratio", "with"}."""
    runs = timed_rounds({"alone": run, "mixed": run}, rounds=rounds, min_rounds=rounds, slot_runs=3,
                        slot_s=budget_s / (2 * rounds), between={"mixed": tuple(others.values())},
                        warmup=(run, *others.values()))
    alone, mixed = runs["alone"], runs["mixed"]
    a, m = statistics.median(alone), statistics.median(mixed)
    return {"alone_ms": a, "interleaved_ms": m, "ratio": m / a, "with": list(others), "runs": [len(alone), len(mixed)]}
