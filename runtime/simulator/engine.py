"""Lower + replay + assemble results: the simulator's entry points below the public API.

``run_specs(specs, arch)`` lowers layer specs for an architecture and replays them;
``result_from(...)`` turns a replay into a :class:`SimulationResult`; ``check_fallbacks``
applies the strict / warn policy for patterns an architecture cannot run.
"""

from __future__ import annotations

import warnings

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.errors import PatternFallbackWarning, UnsupportedPatternError
from crisp.runtime.simulator.lowering import lower_layers
from crisp.runtime.simulator.replay import Replay, replay
from crisp.runtime.simulator.result import LayerResult, SimulationResult
from crisp.runtime.simulator.workload import LayerSpec


def check_fallbacks(names: list[str], infos: list[dict], arch: Arch, strict: bool) -> list[str]:
    """Notes about layers that run denser than their pattern; raise (strict) or warn once."""
    falls = [(n, i["fallback"]) for n, i in zip(names, infos) if i.get("fallback")]
    if not falls:
        return []
    reasons = sorted({why for _, why in falls})
    listed = ", ".join(n for n, _ in falls[:5]) + (f" and {len(falls) - 5} more" if len(falls) > 5 else "")
    text = f"{len(falls)} layer(s) ({listed}) cannot run their pattern natively on {arch.name}: " + "; ".join(reasons)
    if strict:
        raise UnsupportedPatternError(
            text + f". Choose an architecture whose patterns include the layer's (this one runs "
            f"{'/'.join(arch.patterns) or 'dense only'}), or pass strict=False to simulate the fallback."
        )
    warnings.warn(text, PatternFallbackWarning, stacklevel=3)
    return [text]


def arch_notes(arch: Arch) -> list[str]:
    notes = [f"SMEM read bandwidth {arch.smem_read_bw:g} B/cycle (the CRISP paper gives no number; "
             "Sparseloop's STC uses 42 for 4x the MACs)"]
    if arch.dataflow == "outer-product":
        notes.append(f"{arch.name}: activation density {arch.activation_density:g} (a parameter; the paper's setup "
                     "gives DSTC activation sparsity 'to 40%')")
    return notes


def result_from(headers: list[dict], infos: list[dict], rp: Replay, arch: Arch, notes: list[str]) -> SimulationResult:
    layers = []
    c = rp.counts
    for i, (h, info) in enumerate(zip(headers, infos)):
        cyc = int(rp.cycles[i])
        macs = int(round(c["macs_act"][i]))
        layers.append(LayerResult(
            name=h["name"], kind=h["kind"], M=h["M"], K=h["K"], N=h["N"],
            execution=info["execution"], bound=rp.bound[i], cycles=cyc,
            utilization=macs / max(1, cyc * arch.total_macs), lane_utilization=float(info["lane_utilization"]),
            macs_alg=int(info["macs_alg"]), macs_act=macs,
            weight_density=float(info["weight_density"]), activation_density=float(info["activation_density"]),
            dram_read_bytes=int(c["dram_read_bytes"][i]), dram_read_meta_bytes=int(c["dram_read_meta_bytes"][i]),
            dram_write_bytes=int(c["dram_write_bytes"][i]), smem_read_bytes=int(c["smem_read_bytes"][i]),
            smem_read_meta_bytes=int(c["smem_read_meta_bytes"][i]), smem_write_bytes=int(c["smem_write_bytes"][i]),
            energy_pj={k: float(v[i]) for k, v in rp.energy_pj.items()},
            resource_cycles={k: float(v[i]) for k, v in rp.resource_cycles.items()},
            format_metadata_bytes=int(h.get("metadata_bytes", 0)),
            paper_metadata_bits=float(h.get("paper_metadata_bits", 0.0)),
            fallback=info.get("fallback"),
        ))
    return SimulationResult(arch=arch, layers=layers, notes=list(notes))


def run_specs(specs: list[LayerSpec], arch: Arch, *, strict: bool = False, timings: bool = True):
    """Lower and replay; returns (columns with timings, infos, replay, notes)."""
    cols, infos = lower_layers(specs, arch)
    notes = check_fallbacks([s.name for s in specs], infos, arch, strict) + arch_notes(arch)
    rp = replay(cols, infos, arch, timings=timings)
    if timings:
        cols["start"], cols["end"] = rp.start, rp.end
    return cols, infos, rp, notes


def simulate_specs(specs: list[LayerSpec], arch: Arch, *, strict: bool = False) -> SimulationResult:
    """Simulate layer specs directly (no trace object), e.g. for calibration and sweeps."""
    _, infos, rp, notes = run_specs(specs, arch, strict=strict, timings=False)
    return result_from([s.header() for s in specs], infos, rp, arch, notes)
