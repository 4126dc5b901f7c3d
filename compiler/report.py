"""The per-layer compile report: what was pruned, why, and what it costs.

One row per candidate layer (pruned or not, with the reason) and whole-model totals: weights
kept, compact vs dense bytes, metadata, MACs kept, target vs achieved sparsity. Prints as a
table; ``to_dict`` / ``save_json`` give it to tools.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from crisp.fileio import atomic_write_text
from crisp.ir.layer_info import LayerInfo
from crisp.sparsity.selection import density_distribution, density_line
from crisp.tables import table


@dataclass
class LayerRow:
    name: str
    kind: str
    gemm_shape: tuple[int, int]
    pruned: bool
    reason: str
    pattern: str
    kept_blocks_per_row: int | None
    blocks_per_row: int | None
    density: float
    weights: int
    weights_kept: int
    dense_bytes: int
    compact_bytes: int
    metadata_bits: int
    paper_metadata_bits: float
    macs_dense: int
    macs_kept: int

    @classmethod
    def from_layer(cls, info: LayerInfo) -> "LayerRow":
        rows, k = info.gemm_shape
        weights = rows * k
        dense_bytes = weights * 4
        t = info.compact
        kept = int(info.mask.sum()) if info.mask is not None else weights
        return cls(
            name=info.name, kind=info.kind_label, gemm_shape=(rows, k), pruned=t is not None, reason=info.reason,
            pattern=f"{t.pattern.n}:{t.pattern.m}/{t.pattern.block}" if t is not None else "dense",
            kept_blocks_per_row=t.kept_blocks_per_row if t is not None else None,
            blocks_per_row=t.num_block_cols if t is not None else None,
            density=kept / weights if weights else 1.0, weights=weights, weights_kept=kept,
            dense_bytes=dense_bytes, compact_bytes=t.nbytes if t is not None else dense_bytes,
            metadata_bits=t.metadata_bits if t is not None else 0,
            paper_metadata_bits=t.paper_metadata_bits if t is not None else 0.0,
            macs_dense=info.macs_dense, macs_kept=info.macs_kept,
        )


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


@dataclass
class Report:
    rows: list[LayerRow]
    target_sparsity: float | None
    achieved_sparsity: float | None
    pattern: str
    relative_error: float | None = None
    allocation: str | None = None

    @classmethod
    def from_layers(cls, layers: list[LayerInfo], sparsity: dict | None, relative_error: float | None = None) -> "Report":
        p = sparsity["pattern"] if sparsity else None
        return cls(
            rows=[LayerRow.from_layer(i) for i in layers],
            target_sparsity=sparsity["target"] if sparsity else None,
            achieved_sparsity=sparsity["achieved"] if sparsity else None,
            pattern=f"{p.n}:{p.m} in {p.block}x{p.block} blocks" if p else "none",
            relative_error=relative_error,
            allocation=sparsity.get("allocation") if sparsity else None,
        )

    # ------------------------------------------------------------------ totals
    def totals(self) -> dict:
        pruned = [r for r in self.rows if r.pruned]
        return {
            "layers": len(self.rows),
            "layers_pruned": len(pruned),
            "weights": sum(r.weights for r in self.rows),
            "weights_kept": sum(r.weights_kept for r in self.rows),
            "pruned_layer_weights": sum(r.weights for r in pruned),
            "pruned_layer_weights_kept": sum(r.weights_kept for r in pruned),
            "dense_bytes": sum(r.dense_bytes for r in self.rows),
            "compact_bytes": sum(r.compact_bytes for r in self.rows),
            "metadata_bytes": sum(r.metadata_bits for r in self.rows) // 8,
            "paper_metadata_bytes": sum(r.paper_metadata_bits for r in self.rows) / 8,
            "macs_dense": sum(r.macs_dense for r in self.rows),
            "macs_kept": sum(r.macs_kept for r in self.rows),
        }

    def density_distribution(self) -> dict:
        """Min / median / max density of the pruned layers and the layers kept at 1 block per row."""
        return density_distribution({r.name: (r.density, r.kept_blocks_per_row) for r in self.rows if r.pruned})

    def to_dict(self) -> dict:
        return {
            "pattern": self.pattern,
            "allocation": self.allocation,
            "density_distribution": self.density_distribution(),
            "target_sparsity": self.target_sparsity,
            "achieved_sparsity": self.achieved_sparsity,
            "relative_error_vs_masked_dense": self.relative_error,
            "totals": self.totals(),
            "layers": [asdict(r) for r in self.rows],
        }

    def save_json(self, path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    # ------------------------------------------------------------------ text
    def table(self) -> str:
        head = ["layer", "kind", "GEMM", "pattern", "blocks/row", "density", "compact", "meta bits (paper)", "MACs kept/dense", "why"]
        lines = []
        for r in self.rows:
            blocks = f"{r.kept_blocks_per_row}/{r.blocks_per_row}" if r.pruned else "-"
            meta = f"{r.metadata_bits} ({r.paper_metadata_bits:.0f})" if r.pruned else "-"
            lines.append([
                r.name, r.kind, f"{r.gemm_shape[0]}x{r.gemm_shape[1]}", r.pattern, blocks, f"{r.density:.3f}",
                _human(r.compact_bytes) + "B", meta, f"{_human(r.macs_kept)}/{_human(r.macs_dense)}",
                "pruned" if r.pruned else r.reason,
            ])
        return table(lines, head)

    def summary(self) -> str:
        t = self.totals()
        pw, pk = t["pruned_layer_weights"], t["pruned_layer_weights_kept"]
        lines = [
            f"pattern: {self.pattern}; layers pruned: {t['layers_pruned']} of {t['layers']}",
        ]
        if self.target_sparsity is not None:
            alloc = f" (allocation {self.allocation})" if self.allocation else ""
            lines.append(f"sparsity over pruned layers: target {self.target_sparsity:.3f}, achieved {self.achieved_sparsity:.3f}{alloc}")
            lines.append(density_line(self.density_distribution()))
        lines += [
            f"weights kept: {pk:,} of {pw:,} in pruned layers ({pk / max(1, pw):.1%}); "
            f"{t['weights_kept']:,} of {t['weights']:,} in all conv/linear layers ({t['weights_kept'] / max(1, t['weights']):.1%})",
            f"weight bytes: compact {_mib(t['compact_bytes'])} vs dense {_mib(t['dense_bytes'])} "
            f"({t['compact_bytes'] / max(1, t['dense_bytes']):.1%}); metadata {_mib(t['metadata_bytes'])} stored, "
            f"{_mib(t['paper_metadata_bytes'])} by the paper's formula",
            f"MACs per sample: {_human(t['macs_kept'])} kept of {_human(t['macs_dense'])} ({t['macs_kept'] / max(1, t['macs_dense']):.1%})",
        ]
        if self.relative_error is not None:
            lines.append(f"output vs masked dense model: relative error {self.relative_error:.2e}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table() + "\n\n" + self.summary()
