"""Fig.-8-style plots: per-layer speedup and energy efficiency over dense, and sweeps.

Needs matplotlib (``pip install 'crisp[plot]'``); it is imported only when a plot is drawn.
Files are written atomically (temp file in the same directory, then renamed).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from crisp.fileio import atomic_write_bytes

from crisp.runtime.simulator.errors import SimulationInputError
from crisp.runtime.simulator.result import Comparison

_COLORS = {"crisp-stc": "#1f77b4", "nvidia-stc": "#2ca02c", "dstc": "#d62728", "tc": "#7f7f7f"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SimulationInputError("plotting needs matplotlib, which is not installed: pip install 'crisp[plot]'") from exc
    return plt


def _save(fig, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _bars(ax, comparison: Comparison, metric: str, title: str) -> None:
    import numpy as np

    names = [n for n in comparison.results if n != comparison.baseline]
    layers = [l.name for l in comparison.results[comparison.baseline].layers]
    x = np.arange(len(layers))
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        vals = comparison.speedup(n) if metric == "speedup" else comparison.energy_efficiency(n)
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=n, color=_COLORS.get(n))
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90, fontsize=5)
    ax.set_ylabel(f"{metric.replace('_', ' ')} over {comparison.baseline} (log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def plot_comparison(comparison: Comparison, path: str | os.PathLike, title: str = "") -> None:
    """Per-layer speedup and energy efficiency of every design over the baseline."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(14, 8))
    _bars(axes[0], comparison, "speedup", f"{title} speedup".strip())
    _bars(axes[1], comparison, "energy_efficiency", f"{title} energy efficiency".strip())
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_fig8(main: Comparison, block_sweep: dict, nm_sweep: dict, path: str | os.PathLike, title: str = "") -> None:
    """Fig. 8 layout: per-layer speedup and energy efficiency of the sparse designs over dense,
    plus CRISP-STC's per-layer speedup for each block size and each N:M pattern."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(14, 16))
    _bars(axes[0], main, "speedup", f"{title}: speedup over dense".strip(": "))
    _bars(axes[1], main, "energy_efficiency", f"{title}: energy efficiency over dense".strip(": "))
    for ax, sweep, label in ((axes[2], block_sweep, "block"), (axes[3], nm_sweep, "N:M")):
        for key, comp in sweep.items():
            sp = comp.speedup("crisp-stc")
            ee = comp.total_energy_efficiency("crisp-stc")
            ax.plot(np.arange(len(sp)), sp, marker="o", markersize=3, linewidth=1,
                    label=f"{label} {key}: total {comp.total_speedup('crisp-stc'):.1f}x speed, {ee:.1f}x energy")
        layers = [l.name for l in next(iter(sweep.values())).results["crisp-stc"].layers] if sweep else []
        ax.set_xticks(np.arange(len(layers)))
        ax.set_xticklabels(layers, rotation=90, fontsize=5)
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_ylabel("CRISP-STC speedup over dense (log)")
        ax.set_title(f"CRISP-STC per-layer speedup, {label} sweep", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
