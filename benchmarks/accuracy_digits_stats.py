"""Statistics for ``accuracy_digits.py``: mean +- std per cell, paired differences CRISP - baseline
with their 95 % t intervals, and the issue's targets checked on the held-out folds."""

from __future__ import annotations

import math
import statistics

# two-sided 95 % Student t critical values by degrees of freedom (1..30); 1.96 beyond
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.96


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of ``a - b`` (paired by run) and its 95 % t interval."""
    d = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(d)
    half = t95(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "runs": len(d)}


def _acc(rows, model, k, kappa, method) -> dict[tuple, float]:
    """``(seed) -> test accuracy (%)`` of one cell; dense fine-tuning has no sparsity."""
    return {r["seed"]: 100 * r["test_accuracy"] for r in rows
            if r["model"] == model and r["k"] == k and r["method"] == method
            and (method == "dense_ft" or r["sparsity"] == kappa)}


def cells(rows) -> list[tuple]:
    return sorted({(r["model"], r["k"], r["sparsity"], r["method"]) for r in rows if r["sparsity"] is not None},
                  key=lambda c: (c[0], c[1], c[2], c[3]))


def summarize(rows) -> dict:
    """``summary[model][k][kappa][method] = {mean, std, runs, flops_ratio, achieved_sparsity}``."""
    out: dict = {}
    for model, k, kappa, method in cells(rows) + [(r["model"], r["k"], None, "dense_ft") for r in rows if r["method"] == "dense_ft"]:
        sel = [r for r in rows if r["model"] == model and r["k"] == k and r["method"] == method and r["sparsity"] == kappa]
        accs = [100 * r["test_accuracy"] for r in sel]
        out.setdefault(model, {}).setdefault(str(k), {}).setdefault(str(kappa), {})[method] = {
            "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "runs": len(accs),
            "flops_ratio": statistics.fmean(r["flops_ratio"] for r in sel),
            "achieved_sparsity": statistics.fmean(r["achieved_sparsity"] for r in sel),
        }
    return out


def difference(rows, model, k, kappa, method, baseline) -> dict | None:
    a, b = _acc(rows, model, k, kappa, method), _acc(rows, model, k, kappa, baseline)
    seeds = sorted(set(a) & set(b))
    return paired([a[s] for s in seeds], [b[s] for s in seeds]) if seeds else None


def _fmt(d: dict) -> str:
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}], {d['runs']} runs"


def check_targets(rows, models, sizes, sparsities) -> list[dict]:
    """The issue's targets, each with the paired difference it rests on."""
    out = []

    def add(name, d, ok):
        if d is not None:
            out.append({"target": name, "met": bool(ok(d)), "detail": _fmt(d)})

    for model in models:
        for k in sizes:
            if 0.9 in sparsities:
                add(f"{model}: CRISP (default) at 90 % within 1.5 points of dense fine-tuned ({k} classes)",
                    difference(rows, model, k, 0.9, "crisp_taylor", "dense_ft"), lambda d: d["mean"] >= -1.5)
            for kappa in sparsities:
                add(f"{model}: CRISP >= block-only at {int(100 * kappa)} % ({k} classes)",
                    difference(rows, model, k, kappa, "crisp_taylor", "block_only"), lambda d: d["mean"] >= 0)
                if kappa >= 0.9:
                    add(f"{model}: CRISP >= filter pruning at equal FLOPs at {int(100 * kappa)} % ({k} classes)",
                        difference(rows, model, k, kappa, "crisp_taylor", "filter"), lambda d: d["mean"] >= 0)
        pool = [(k, kp) for k in sizes for kp in sparsities]
        for method, base, name in (("crisp_taylor", "crisp_magnitude", "Taylor >= magnitude on average"),
                                   ("learned_nm", "magnitude_nm", "learned 2:4 >= magnitude 2:4 (frozen weights)")):
            a, b = [], []
            for k, kp in pool + [(k, 0.5) for k in sizes]:
                x, y = _acc(rows, model, k, kp, method), _acc(rows, model, k, kp, base)
                for s in sorted(set(x) & set(y)):
                    a.append(x[s])
                    b.append(y[s])
            if a:
                add(f"{model}: {name}", paired(a, b), lambda d: d["mean"] >= 0)
    return out
