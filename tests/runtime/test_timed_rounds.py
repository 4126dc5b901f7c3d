"""crisp.runtime.timed_rounds: the one interleaved timing loop (warm-up, rounds, slots, untimed calls
between, the race)."""

from __future__ import annotations

import itertools

from crisp.runtime.timed_rounds import timed_rounds


def _recorder(log: list[str], name: str):
    return lambda: log.append(name)


def test_calls_warm_up_then_alternate_once_a_round():
    log: list[str] = []
    runs = timed_rounds({"a": _recorder(log, "a"), "b": _recorder(log, "b")}, rounds=3)
    assert log == ["a", "b"] + ["a", "b"] * 3
    assert {name: len(times) for name, times in runs.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for times in runs.values() for t in times)


def test_clock_is_the_callers_and_times_are_milliseconds():
    ticks = itertools.count()
    runs = timed_rounds({"a": lambda: None}, rounds=2, clock=lambda: next(ticks))
    assert runs == {"a": [1e3, 1e3]}


def test_budget_stops_after_min_rounds():
    runs = timed_rounds({"a": lambda: None}, rounds=50, min_rounds=4, budget_s=0.0)
    assert len(runs["a"]) == 4


def test_slots_between_and_warmup():
    log: list[str] = []
    run, other = _recorder(log, "run"), _recorder(log, "other")
    runs = timed_rounds({"alone": run, "mixed": run}, rounds=2, slot_runs=2, between={"mixed": (other,)},
                        warmup=(run, other))
    assert log == ["run", "other"] + (["run"] * 2 + ["other", "run"] * 2) * 2
    assert [len(runs["alone"]), len(runs["mixed"])] == [4, 4]


def test_a_call_far_over_the_best_leaves_the_race():
    cost = {"fast": 1.0, "slow": 10.0}
    now = [0.0]

    def call(name):
        def run():
            now[0] += cost[name]
        return run

    runs = timed_rounds({name: call(name) for name in cost}, rounds=6, min_rounds=2, clock=lambda: now[0],
                        score=lambda name, times: min(times), drop=3.0)
    assert len(runs["fast"]) == 6
    assert len(runs["slow"]) == 2  # dropped after the second round, its times kept
