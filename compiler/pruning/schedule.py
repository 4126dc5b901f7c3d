"""The CRISP sparsity schedule (Alg. 1): N:M first, then block sparsity grows by a fixed
step Delta until the target.

Step 0 prunes to ``1 - n/m`` (N:M only); step ``p`` in ``1..steps`` prunes to
``kappa_p = (1 - n/m) + Delta * p`` with ``Delta = (kappa - (1 - n/m)) / steps``, so the last
step lands on ``kappa``. When ``kappa`` equals ``1 - n/m`` the schedule is the N:M step alone.
``steps=0`` is the one-shot schedule: a single step straight to ``kappa`` (N:M and blocks
together), so the whole fine-tune budget goes to recovering from the final masks.
"""

from __future__ import annotations

from crisp.errors import PatternError
from crisp.sparsity.pattern import Pattern, check_sparsity


def sparsity_schedule(pattern: Pattern, sparsity: float, steps: int) -> list[float]:
    """Target sparsity of every pruning step, N:M step first."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise PatternError(f"steps must be an integer >= 0 (block-pruning steps after the N:M step; "
                           f"0 prunes to the target in one step), got {steps!r}")
    kappa = check_sparsity(sparsity, pattern)
    base = pattern.min_sparsity
    if steps == 0 or kappa - base <= 1e-12:
        return [kappa]
    delta = (kappa - base) / steps
    return [base] + [base + delta * p for p in range(1, steps)] + [kappa]


def schedule_delta(pattern: Pattern, sparsity: float, steps: int) -> float:
    """Delta, the block-sparsity increase per step."""
    sched = sparsity_schedule(pattern, sparsity, steps)
    return 0.0 if len(sched) == 1 else sched[1] - sched[0]
