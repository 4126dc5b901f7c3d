"""Draw a compile report: per layer the kept density, kept blocks per block-row and MACs dense vs kept."""

from __future__ import annotations

import os

from crisp.errors import CrispError
from crisp.report import Report


def plot_report(report: Report, path: str | os.PathLike, title: str = "") -> None:
    """Write a three-panel figure of ``report`` to ``path`` (the format follows the extension)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CrispError("--plot needs matplotlib: pip install 'crisp[plot]'") from exc
    rows = report.rows
    names = [r.name for r in rows]
    xs = range(len(rows))
    fig, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.25 * len(rows) + 2), 9), sharex=True)
    axes[0].bar(xs, [r.density for r in rows], color=["tab:blue" if r.pruned else "tab:gray" for r in rows])
    axes[0].set_ylabel("kept density")
    axes[0].set_ylim(0, 1.05)
    axes[1].bar(xs, [r.kept_blocks_per_row or 0 for r in rows], label="kept")
    axes[1].plot(xs, [r.blocks_per_row or 0 for r in rows], "k_", markersize=8, label="blocks per row")
    axes[1].set_ylabel("blocks per row")
    axes[1].legend(fontsize=7)
    axes[2].bar([x - 0.2 for x in xs], [r.macs_dense for r in rows], width=0.4, label="dense")
    axes[2].bar([x + 0.2 for x in xs], [r.macs_kept for r in rows], width=0.4, label="kept")
    axes[2].set_ylabel("MACs per sample")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=7)
    axes[2].set_xticks(list(xs))
    axes[2].set_xticklabels(names, rotation=90, fontsize=6)
    fig.suptitle(title or f"crisp: {report.pattern}")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise CrispError(f"cannot write the plot to {str(path)!r}: {exc}") from exc
    finally:
        plt.close(fig)
