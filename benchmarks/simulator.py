"""Accelerator-simulator benchmark: CRISP-STC vs NVIDIA-STC, DSTC and a dense tensor core.

1. Calibration against Sparseloop's fig. 15 STC case study and the DSTC paper's fig. 21.
2. Trace + simulate ResNet-50, MobileNetV2 and VGG-16 (2:4, block 64, 90 %) on the four
   presets, timing the trace + simulate step (target: all of ResNet-50 on four architectures
   in under 5 s on 2 cores) and the trace file size per instruction.
3. ResNet-50 per layer (Fig. 8 analogue) with two sparsity distributions, a block-size sweep
   (16/32/64), an N:M sweep (1:4/2:4/3:4) and an SMEM-bandwidth sweep.
4. Where the model and the paper disagree, and why.

Masks come from the fast path of crisp.bench.model_workloads (the same masks as
crisp.compile with magnitude saliency, checked against compile for ResNet-50 with --check-compile).

Writes benchmarks/results/simulator.{json,md,png}. Usage:
    python benchmarks/simulator.py [--quick] [--check-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from crisp.backends.stc_trace import Trace, trace_from_layers
from crisp.fileio import atomic_write_text
from crisp.runtime.simulator import get_arch
from crisp.runtime.simulator.calibration import dstc_cycle_calibration, dstc_ratio_calibration, stc_calibration
from crisp.runtime.simulator.plot import plot_fig8
from crisp.bench.model_workloads import model_specs
from crisp.runtime.simulator.workload import specs_from_layers
from crisp.simulate_api import compare_archs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from simulator_report import ARCHS, PAPER_RANGE, render_md  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def trace_and_simulate(specs):
    """The hot path: lower to a trace and replay it, on every preset."""
    out = {}
    for name in ARCHS:
        trace = trace_from_layers(specs, name)
        out[name] = (trace, trace.simulate())
    return out


def summary(values):
    v = sorted(values)
    return {"min": v[0], "median": statistics.median(v), "max": v[-1]}


def comparison_block(comp, pattern: str) -> dict:
    lo, hi = PAPER_RANGE.get(pattern, (None, None))
    sp = comp.speedup("crisp-stc")
    res = comp.results["crisp-stc"]
    rows = []
    for i, layer in enumerate(res.layers):
        rows.append({
            "layer": layer.name, "M": layer.M, "K": layer.K, "N": layer.N, "density": layer.weight_density,
            **{f"{a}_speedup": comp.speedup(a)[i] for a in ARCHS if a != "tc"},
            **{f"{a}_energy_eff": comp.energy_efficiency(a)[i] for a in ARCHS if a != "tc"},
            **{f"{a}_bound": comp.results[a].layers[i].bound for a in ARCHS},
        })
    return {
        "pattern": pattern,
        "total_speedup": {a: comp.total_speedup(a) for a in ARCHS},
        "total_energy_efficiency": {a: comp.total_energy_efficiency(a) for a in ARCHS},
        "energy_uj": {a: comp.results[a].energy_uj for a in ARCHS},
        "energy_uj_by_component": {a: comp.results[a].energy_uj_by_component for a in ARCHS},
        "cycles": {a: comp.results[a].cycles for a in ARCHS},
        "crisp_speedup": summary(sp),
        "crisp_energy_eff": summary(comp.energy_efficiency("crisp-stc")),
        "nvidia_speedup_max": max(comp.speedup("nvidia-stc")),
        "nvidia_energy_eff_max": max(comp.energy_efficiency("nvidia-stc")),
        "dstc_speedup": summary(comp.speedup("dstc")),
        "layers_in_paper_range": (sum(lo <= s <= hi for s in sp) if lo else None),
        "layers": rows,
        "bounds": {a: comp.results[a].totals()["bounds"] for a in ARCHS},
    }


def compare(specs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare_archs(specs, ARCHS)


def trace_size(specs, path: Path) -> dict:
    trace = trace_from_layers(specs, "crisp-stc")
    size = trace.save(path)
    loaded, t_load = timed(lambda: Trace.load(path), repeat=1)
    return {"records": len(trace), "bytes": size, "bytes_per_record": size / max(1, len(trace)),
            "load_s": t_load, "round_trip_equal": bool(loaded.verify()["cycles"] == trace.totals["cycles"])}


def models_section(models: list[str]) -> tuple[dict, dict]:
    """Trace + simulate time, record counts, cycles, energy and trace size of each model."""
    entries, specs_by_model = {}, {}
    for name in models:
        t = time.perf_counter()
        specs = model_specs(name, pattern="2:4", block=64, sparsity=0.9, distribution="global")
        t_specs = time.perf_counter() - t
        specs_by_model[name] = specs
        runs, t_sim = timed(lambda: trace_and_simulate(specs), repeat=3)
        entry = {"layers": len(specs), "mask_selection_s": t_specs, "trace_and_simulate_4_archs_s": t_sim,
                 "records": {a: len(runs[a][0]) for a in ARCHS},
                 "cycles": {a: runs[a][1].cycles for a in ARCHS},
                 "energy_uj": {a: runs[a][1].energy_uj for a in ARCHS}}
        with tempfile.TemporaryDirectory() as tmp:
            entry["trace_file"] = trace_size(specs, Path(tmp) / f"{name}.trc")
        entry["comparison"] = comparison_block(compare(specs), "2:4")
        entries[name] = entry
        print(f"{name}: trace+simulate on 4 archs {t_sim:.3f} s, records {entry['records']}", flush=True)
    return entries, specs_by_model


def bandwidth_sweep(sweep_specs: dict) -> dict:
    """CRISP-STC speedup over TC and SMEM-bound layers as the SMEM bandwidth varies (1:4, two block sizes)."""
    bw = {}
    for b in (10.5, 21, 42, 84):
        arch = get_arch("crisp-stc").with_(name=f"crisp-stc-bw{b:g}", smem_read_bw=b, smem_write_bw=b)
        tc = get_arch("tc").with_(smem_read_bw=b, smem_write_bw=b)
        row = {}
        for blk, specs in sweep_specs.items():
            c = compare_archs(specs, [arch], baseline=tc)
            row[f"1:4_b{blk}_total_speedup"] = c.total_speedup(arch.name)
            row[f"1:4_b{blk}_smem_bound_layers"] = c.results[arch.name].totals()["bounds"].get("smem", 0)
        bw[f"{b:g}"] = row
    return bw


def resnet50_section(quick: bool, global_comparison: dict) -> tuple[dict, object, dict, dict]:
    """ResNet-50 per layer and the block, N:M and bandwidth sweeps (per-layer distribution: the
    trained-network stand-in)."""
    r50 = {}
    base_specs = model_specs("resnet50", pattern="2:4", block=64, sparsity=0.9, distribution="per-layer")
    main_comp = compare(base_specs)
    r50["per_layer_2:4_b64"] = comparison_block(main_comp, "2:4")
    r50["global_2:4_b64"] = global_comparison
    block_sweep, nm_sweep = {64: main_comp}, {"2:4": main_comp}
    if not quick:
        for blk in (16, 32):
            block_sweep[blk] = compare(model_specs("resnet50", pattern="2:4", block=blk, sparsity=0.9,
                                                   distribution="per-layer"))
        nm_specs = {nm: model_specs("resnet50", pattern=nm, block=64, sparsity=0.9, distribution="per-layer")
                    for nm in ("1:4", "3:4")}
        for nm, specs in nm_specs.items():
            nm_sweep[nm] = compare(specs)
        r50["smem_bandwidth_sweep"] = bandwidth_sweep({
            64: nm_specs["1:4"],
            16: model_specs("resnet50", pattern="1:4", block=16, sparsity=0.9, distribution="per-layer")})
    r50["block_sweep"] = {str(k): comparison_block(v, "2:4") for k, v in block_sweep.items()}
    r50["nm_sweep"] = {k: comparison_block(v, k) for k, v in nm_sweep.items()}
    return r50, main_comp, block_sweep, nm_sweep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ResNet-50 only, no sweeps")
    ap.add_argument("--check-compile", action="store_true", help="check the fast masks against crisp.compile")
    ap.add_argument("--render-only", action="store_true", help="rewrite simulator.md from simulator.json")
    args = ap.parse_args()
    if args.render_only:
        atomic_write_text(RESULTS / "simulator.md", render_md(json.loads((RESULTS / "simulator.json").read_text())))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    out: dict = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                             "cpus": os.cpu_count()},
                 "archs": {a: get_arch(a).to_dict() for a in ARCHS}}
    out["calibration"] = {"stc": stc_calibration(), "dstc_fig21": dstc_ratio_calibration("dstc"),
                          "dstc_fig21_sparseloop_hw": dstc_ratio_calibration("sl-dstc"),
                          "dstc_fig15_cycles": dstc_cycle_calibration("sl-dstc")}
    print("calibration done", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["models"], specs_by_model = models_section(["resnet50"] if args.quick else ["resnet50", "mobilenet_v2",
                                                                                         "vgg16"])
        # a large trace for the file-size claim: VGG-16 at batch 32, about a million instructions
        big_name, big_batch = ("resnet50", 8) if args.quick else ("vgg16", 32)
        big = model_specs(big_name, pattern="2:4", block=64, sparsity=0.9, batch=big_batch)
        with tempfile.TemporaryDirectory() as tmp:
            out["large_trace"] = {"model": big_name, "batch": big_batch, **trace_size(big, Path(tmp) / "big.trc")}
        print("large trace", out["large_trace"], flush=True)
        if args.check_compile:
            compiled = specs_from_layers(model_specs("resnet50", distribution="global", via="compile"))
            same = all(np.array_equal(a.block_cols, b.block_cols) and np.array_equal(a.row_block_nnz, b.row_block_nnz)
                       for a, b in zip(specs_by_model["resnet50"], compiled) if a.has_blocks)
            out["fast_masks_equal_compile"] = bool(same and [s.name for s in compiled] ==
                                                   [s.name for s in specs_by_model["resnet50"]])
        out["resnet50"], main_comp, block_sweep, nm_sweep = resnet50_section(args.quick,
                                                                             out["models"]["resnet50"]["comparison"])
    plot_fig8(main_comp, dict(sorted(block_sweep.items())), dict(sorted(nm_sweep.items())),
              RESULTS / "simulator.png", "ResNet-50, 2:4, block 64, 90% per layer")
    out["total_benchmark_s"] = time.perf_counter() - t_all
    atomic_write_text(RESULTS / "simulator.json", json.dumps(out, indent=1, default=float) + "\n")
    atomic_write_text(RESULTS / "simulator.md", render_md(out))
    print(f"wrote {RESULTS / 'simulator.json'}, .md, .png in {out['total_benchmark_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
