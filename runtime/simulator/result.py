"""Results of a simulation: per layer and total cycles, energy by component, bounds.

`SimulationResult` is what ``crisp.simulate`` returns; `Comparison` holds several of them on
the same layers and computes speedup and energy efficiency over a baseline design.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field

from crisp.fileio import atomic_write_text
from crisp.tables import table

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.energy import COMPONENTS


@dataclass
class LayerResult:
    name: str
    kind: str
    M: int
    K: int
    N: int
    execution: str
    bound: str  # "compute", "smem" or "dram"
    cycles: int
    utilization: float  # actual MACs / (cycles x MACs of the machine)
    lane_utilization: float  # share of multiplier lanes a pattern can fill
    macs_alg: int
    macs_act: int
    weight_density: float
    activation_density: float
    dram_read_bytes: int
    dram_read_meta_bytes: int
    dram_write_bytes: int
    smem_read_bytes: int
    smem_read_meta_bytes: int
    smem_write_bytes: int
    energy_pj: dict[str, float]
    resource_cycles: dict[str, float]
    format_metadata_bytes: int = 0
    paper_metadata_bits: float = 0.0
    fallback: str | None = None

    @property
    def energy_uj(self) -> float:
        return sum(self.energy_pj.values()) / 1e6

    def row(self) -> dict:
        out = {
            "layer": self.name, "kind": self.kind, "M": self.M, "K": self.K, "N": self.N,
            "execution": self.execution, "bound": self.bound, "cycles": self.cycles,
            "utilization": round(self.utilization, 4), "lane_utilization": round(self.lane_utilization, 4),
            "macs_alg": self.macs_alg, "macs_act": self.macs_act, "weight_density": round(self.weight_density, 5),
            "activation_density": self.activation_density,
            "dram_read_bytes": self.dram_read_bytes, "dram_read_meta_bytes": self.dram_read_meta_bytes,
            "dram_write_bytes": self.dram_write_bytes, "smem_read_bytes": self.smem_read_bytes,
            "smem_read_meta_bytes": self.smem_read_meta_bytes, "smem_write_bytes": self.smem_write_bytes,
            "format_metadata_bytes": self.format_metadata_bytes,
            "paper_metadata_bits": round(self.paper_metadata_bits, 1),
            "energy_uj": round(self.energy_uj, 6),
        }
        for k in COMPONENTS:
            out[f"energy_{k}_uj"] = round(self.energy_pj[k] / 1e6, 6)
        return out


@dataclass
class SimulationResult:
    arch: Arch
    layers: list[LayerResult]
    notes: list[str] = field(default_factory=list)

    @property
    def cycles(self) -> int:
        return sum(layer.cycles for layer in self.layers)

    @property
    def latency_us(self) -> float:
        return self.cycles / (self.arch.clock_ghz * 1e3)

    @property
    def energy_pj(self) -> dict[str, float]:
        return {k: sum(layer.energy_pj[k] for layer in self.layers) for k in COMPONENTS}

    @property
    def energy_uj(self) -> float:
        return sum(self.energy_pj.values()) / 1e6

    @property
    def energy_uj_by_component(self) -> dict[str, float]:
        return {k: v / 1e6 for k, v in self.energy_pj.items()}

    @property
    def macs_act(self) -> int:
        return sum(layer.macs_act for layer in self.layers)

    @property
    def macs_alg(self) -> int:
        return sum(layer.macs_alg for layer in self.layers)

    @property
    def utilization(self) -> float:
        return self.macs_act / max(1, self.cycles * self.arch.total_macs)

    def layer(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {', '.join(l.name for l in self.layers)}")

    def totals(self) -> dict:
        bounds: dict[str, int] = {}
        for layer in self.layers:
            bounds[layer.bound] = bounds.get(layer.bound, 0) + 1
        return {
            "arch": self.arch.name, "cycles": self.cycles, "latency_us": self.latency_us,
            "energy_uj": self.energy_uj, "energy_uj_by_component": self.energy_uj_by_component,
            "macs_alg": self.macs_alg, "macs_act": self.macs_act, "utilization": self.utilization,
            "dram_read_bytes": sum(l.dram_read_bytes for l in self.layers),
            "dram_read_meta_bytes": sum(l.dram_read_meta_bytes for l in self.layers),
            "dram_write_bytes": sum(l.dram_write_bytes for l in self.layers),
            "smem_read_bytes": sum(l.smem_read_bytes for l in self.layers),
            "smem_read_meta_bytes": sum(l.smem_read_meta_bytes for l in self.layers),
            "smem_write_bytes": sum(l.smem_write_bytes for l in self.layers),
            "bounds": bounds,
        }

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "totals": self.totals(), "layers": [l.row() for l in self.layers],
                "notes": list(self.notes)}

    def format_table(self) -> str:
        rows = [[l.name[:32], l.M, l.K, l.N, f"{l.weight_density:.3f}", l.cycles, l.bound, f"{l.utilization:.2f}",
                 f"{l.energy_uj:.3f}", l.execution] for l in self.layers]
        rows.append(["total", "", "", "", "", self.cycles, "", f"{self.utilization:.2f}", f"{self.energy_uj:.3f}", ""])
        head = ["layer", "M", "K", "N", "dens", "cycles", "bound", "util", "energy uJ", "execution"]
        lines = [self.arch.summary(), table(rows, head, align="lrrrrrrrrl")]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])

    def __repr__(self) -> str:
        return (f"SimulationResult(arch={self.arch.name!r}, layers={len(self.layers)}, cycles={self.cycles}, "
                f"energy_uj={self.energy_uj:.3f})")


@dataclass
class Comparison:
    """Several designs simulated on the same layers; ratios are over ``baseline``."""

    results: dict[str, SimulationResult]
    baseline: str = "tc"

    def speedup(self, arch: str) -> list[float]:
        base = self.results[self.baseline]
        return [b.cycles / max(1, l.cycles) for b, l in zip(base.layers, self.results[arch].layers)]

    def energy_efficiency(self, arch: str) -> list[float]:
        base = self.results[self.baseline]
        return [b.energy_uj / max(1e-18, l.energy_uj) for b, l in zip(base.layers, self.results[arch].layers)]

    def total_speedup(self, arch: str) -> float:
        return self.results[self.baseline].cycles / max(1, self.results[arch].cycles)

    def total_energy_efficiency(self, arch: str) -> float:
        return self.results[self.baseline].energy_uj / max(1e-18, self.results[arch].energy_uj)

    def rows(self) -> list[dict]:
        out = []
        for name, res in self.results.items():
            sp, ee = self.speedup(name), self.energy_efficiency(name)
            for l, s, e in zip(res.layers, sp, ee):
                row = {"arch": name, **l.row(), "speedup": round(s, 4), "energy_efficiency": round(e, 4)}
                out.append(row)
        return out

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        rows = self.rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["arch"])
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def format_table(self) -> str:
        names = list(self.results)
        base = self.results[self.baseline]
        speedups = {n: self.speedup(n) for n in names}
        efficiencies = {n: self.energy_efficiency(n) for n in names}
        rows = [[l.name[:32], f"{self.results[names[0]].layers[i].weight_density:.3f}",
                 *(f"{speedups[n][i]:.2f} ({efficiencies[n][i]:5.2f})" for n in names)] for i, l in enumerate(base.layers)]
        rows.append(["total", "", *(f"{self.total_speedup(n):.2f} ({self.total_energy_efficiency(n):5.2f})" for n in names)])
        lines = ["speedup over " + self.baseline + " (energy efficiency in brackets)",
                 table(rows, ["layer", "density", *(n + " x" for n in names)], align="lr" + "r" * len(names))]
        notes = sorted({note for r in self.results.values() for note in r.notes})
        return "\n".join(lines + [f"note: {n}" for n in notes])
