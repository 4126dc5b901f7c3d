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
from crisp.bench.model_workloads import model_specs
from crisp.runtime.simulator.workload import specs_from_layers
from crisp.simulate_api import compare_archs
from crisp.tables import table

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = ("crisp-stc", "nvidia-stc", "dstc", "tc")
PAPER_RANGE = {"1:4": (7, 14), "2:4": (5, 12), "3:4": (2, 8)}


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

    # 1. calibration
    out["calibration"] = {"stc": stc_calibration(), "dstc_fig21": dstc_ratio_calibration("dstc"),
                          "dstc_fig21_sparseloop_hw": dstc_ratio_calibration("sl-dstc"),
                          "dstc_fig15_cycles": dstc_cycle_calibration("sl-dstc")}
    print("calibration done", flush=True)

    # 2. models: trace + simulate timing, trace size
    models = ["resnet50"] if args.quick else ["resnet50", "mobilenet_v2", "vgg16"]
    out["models"] = {}
    specs_by_model = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
            comp = compare(specs)
            entry["comparison"] = comparison_block(comp, "2:4")
            out["models"][name] = entry
            print(f"{name}: trace+simulate on 4 archs {t_sim:.3f} s, records {entry['records']}", flush=True)
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

        # 3. ResNet-50 per layer, sweeps (per-layer distribution: the trained-network stand-in)
        r50 = {}
        base_specs = model_specs("resnet50", pattern="2:4", block=64, sparsity=0.9, distribution="per-layer")
        main_comp = compare(base_specs)
        r50["per_layer_2:4_b64"] = comparison_block(main_comp, "2:4")
        r50["global_2:4_b64"] = out["models"]["resnet50"]["comparison"]
        block_sweep, nm_sweep = {64: main_comp}, {"2:4": main_comp}
        if not args.quick:
            for blk in (16, 32):
                block_sweep[blk] = compare(model_specs("resnet50", pattern="2:4", block=blk, sparsity=0.9,
                                                       distribution="per-layer"))
            nm_specs = {nm: model_specs("resnet50", pattern=nm, block=64, sparsity=0.9, distribution="per-layer")
                        for nm in ("1:4", "3:4")}
            for nm, specs in nm_specs.items():
                nm_sweep[nm] = compare(specs)
            sweep_specs = {64: nm_specs["1:4"],
                           16: model_specs("resnet50", pattern="1:4", block=16, sparsity=0.9, distribution="per-layer")}
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
            r50["smem_bandwidth_sweep"] = bw
        r50["block_sweep"] = {str(k): comparison_block(v, "2:4") for k, v in block_sweep.items()}
        r50["nm_sweep"] = {k: comparison_block(v, k) for k, v in nm_sweep.items()}
        out["resnet50"] = r50

    from crisp.runtime.simulator.plot import plot_fig8

    plot_fig8(main_comp, dict(sorted(block_sweep.items())), dict(sorted(nm_sweep.items())),
              RESULTS / "simulator.png", "ResNet-50, 2:4, block 64, 90% per layer")
    out["total_benchmark_s"] = time.perf_counter() - t_all
    atomic_write_text(RESULTS / "simulator.json", json.dumps(out, indent=1, default=float) + "\n")
    atomic_write_text(RESULTS / "simulator.md", render_md(out))
    print(f"wrote {RESULTS / 'simulator.json'}, .md, .png in {out['total_benchmark_s']:.1f} s")
    return 0


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return table(rows, head, fmt="markdown").splitlines()


def render_md(out: dict) -> str:
    L: list[str] = []
    cal = out["calibration"]
    L += ["# Accelerator simulator: CRISP-STC vs NVIDIA-STC, DSTC and a dense tensor core", "",
          "Generated by `benchmarks/simulator.py`; numbers from `simulator.json`, plot in `simulator.png`.",
          f"Machine: {out['machine']['platform']}, {out['machine']['cpus']} CPUs, Python {out['machine']['python']}. "
          f"Whole benchmark: {out['total_benchmark_s']:.0f} s.", "",
          "All four designs run on the same hardware, the paper's CRISP-STC (Sec. III-E): 4 cores x 64 MACs, "
          "1 KB accumulator RF per core, 256 KB SMEM, SMEM 42 B/cycle read and write (the paper gives no number; "
          "this is Sparseloop's STC value, which serves 4x the MACs), DRAM 32 B/cycle, int8, Sparseloop's 45 nm "
          "STC-family energy table (DSTC: its own LRF energies). Speedup and energy efficiency are over `tc` on that "
          "hardware. DSTC activation density: 0.6 (the paper's \"activation sparsity to 40%\").", ""]

    L += ["## Speed of the simulator", "",
          "Trace + simulate = lower every layer to instructions, replay them, time them (best of 3). "
          "Target: all of ResNet-50 on four architectures in under 5 s on 2 cores.", ""]
    rows = []
    for name, m in out["models"].items():
        rows.append([name, m["layers"], ", ".join(f"{a} {n}" for a, n in m["records"].items()),
                     f"{m['trace_and_simulate_4_archs_s']:.3f} s", f"{m['mask_selection_s']:.1f} s",
                     f"{m['trace_file']['bytes_per_record']:.2f}"])
    L += _table(["model", "layers", "instructions per design", "trace + simulate, 4 designs",
                 "mask selection (not timed target)", "trace file bytes / instruction"], rows)
    big = out["large_trace"]
    L += ["", f"Large trace: {big['model']} at batch {big['batch']}: {big['records']:,} instructions in "
          f"{big['bytes'] / 1e6:.2f} MB ({big['bytes_per_record']:.2f} B per instruction), loaded in "
          f"{big['load_s']:.2f} s; load + replay reproduces the header totals: {big['round_trip_equal']}.", ""]
    if "fast_masks_equal_compile" in out:
        L += [f"Masks of the fast path equal `crisp.compile`'s on ResNet-50: {out['fast_masks_equal_compile']}.", ""]

    L += ["## Calibration", "", "### Sparseloop fig. 15 (TC, STC, STC_flexible with CP metadata)", ""]
    stc = cal["stc"]
    rows = [[r["layer"], r["weight_density"], r["design"], r["cycles"], r["ref_cycles"], f"{r['cycle_ratio']:.4f}",
             f"{r['energy_uj']:.2f}", f"{r['ref_energy_uj']:.2f}", f"{r['energy_ratio']:.4f}", r["bound"]] for r in stc]
    L += _table(["GEMM", "WD", "design", "cycles", "Sparseloop", "ratio", "energy uJ", "Sparseloop uJ", "ratio",
                 "bound"], rows)
    worst_c = max(abs(r["cycle_ratio"] - 1) for r in stc)
    worst_e = max(abs(r["energy_ratio"] - 1) for r in stc)
    L += ["", f"Worst cycle error {worst_c:.2%} (target 10%), worst energy error {worst_e:.2%} (target 15%). "
          "Cycles follow Sparseloop's rule exactly: max(compute, SMEM reads of weights + activations + metadata "
          "rounded to a power of two bits / 42). The energy gaps: on M128-K1152-N1024 at full density "
          "Sparseloop's mapper keeps 64 output positions per weight load (it re-reads weights every 64), our RF "
          "sizing gives 128, so we count half its weight reads from SMEM (-2% to -4%).", ""]
    L += ["### DSTC paper fig. 21 latency ratios (4096^3 GEMM)", ""]
    rows = []
    for a, b in zip(cal["dstc_fig21"], cal["dstc_fig21_sparseloop_hw"]):
        rows.append([a["weight_density"], a["activation_density"], f"{a['ref_ratio']:.3f}", f"{a['latency_ratio']:.3f}",
                     f"{a['rel_error']:+.1%}", f"{b['latency_ratio']:.3f}", f"{b['rel_error']:+.1%}"])
    L += _table(["weight density", "activation density", "fig. 21", "dstc preset", "error", "sl-dstc (1024 MACs)",
                 "error"], rows)
    L += ["", "Model: per K step a core multiplies the non-zeros of a weight column of its tile (32 rows on the "
          "dstc preset, 64 on sl-dstc) by the non-zeros of an activation row, ceil(nnz/8) x ceil(nnz/8) cycles on "
          "its 8x8 array, in expectation over random sparsity. Quantisation makes 0.9 density cost as much as 1.0, "
          "the largest error (+10%).", ""]
    L += ["### Sparseloop fig. 15 DSTC cycles (reported, not a target)", ""]
    rows = [[r["layer"], r["weight_density"], r["activation_density"], r["cycles"], r["ref_cycles"],
             f"{r['cycle_ratio']:.3f}"] for r in cal["dstc_fig15_cycles"]]
    L += _table(["GEMM", "WD", "IAD", "cycles", "Sparseloop", "ratio"], rows)
    sparse = [r["cycle_ratio"] - 1 for r in cal["dstc_fig15_cycles"] if r["weight_density"] < 1]
    dense = [r["cycle_ratio"] - 1 for r in cal["dstc_fig15_cycles"] if r["weight_density"] >= 1]
    L += ["", f"Sparse-weight runs land within {min(sparse):+.0%} to {max(sparse):+.0%}; the dense-weight runs "
          f"are {min(dense):+.0%} to {max(dense):+.0%}, where Sparseloop's DSTC skips only by activations "
          "(position tiling of one operand) and its imbalance model differs from our binomial quantisation.", ""]
    r50 = out["resnet50"]
    pl, gl = r50["per_layer_2:4_b64"], r50["global_2:4_b64"]
    L += ["## ResNet-50, 2:4, block 64, 90% sparsity", "",
          "Two mask distributions. The in-project models have random weights (no pretrained weights are "
          "available here), whose magnitudes scale as 1/sqrt(fan-in); CRISP's global ranking (what "
          "`crisp.compile` does) then prunes the wide layers to one block per row (99%) and leaves K=64 layers at "
          "2:4 (50%). *Per-layer* selects every layer at 90% on its own, standing in for a trained network whose "
          "layers sit near the global sparsity (the paper's Fig. 8 layers are 80-90% sparse).", ""]
    rows = []
    for label, c in (("per-layer", pl), ("global (crisp.compile)", gl)):
        for a in ARCHS:
            rows.append([label, a, _x(c["total_speedup"][a]), _x(c["total_energy_efficiency"][a]), c["cycles"][a],
                         f"{c['energy_uj'][a]:.0f}", ", ".join(f"{k} {v}" for k, v in c["bounds"][a].items())])
    L += _table(["distribution", "design", "speedup", "energy eff.", "cycles", "energy uJ", "layer bounds"], rows)
    L += ["", f"CRISP-STC per-layer speedup: per-layer {pl['crisp_speedup']['min']:.1f}-{pl['crisp_speedup']['max']:.1f}x "
          f"(median {pl['crisp_speedup']['median']:.1f}), {pl['layers_in_paper_range']} of 54 layers inside the "
          f"paper's 5-12x; global {gl['crisp_speedup']['min']:.1f}-{gl['crisp_speedup']['max']:.0f}x, "
          f"{gl['layers_in_paper_range']} of 54 inside. NVIDIA-STC at most {_x(max(pl['nvidia_speedup_max'], gl['nvidia_speedup_max']))} "
          f"(energy at most {_x(max(pl['nvidia_energy_eff_max'], gl['nvidia_energy_eff_max']))}).", ""]
    L += ["Energy by component (uJ, per-layer distribution):", ""]
    comps = list(next(iter(pl["energy_uj_by_component"].values())))
    L += _table(["design"] + comps, [[a] + [f"{pl['energy_uj_by_component'][a][c]:.0f}" for c in comps] for a in ARCHS])
    L += ["", "### Per layer (per-layer distribution)", ""]
    rows = [[r["layer"], r["M"], r["K"], r["N"], f"{r['density']:.3f}", _x(r["crisp-stc_speedup"]),
             _x(r["nvidia-stc_speedup"]), _x(r["dstc_speedup"]), _x(r["crisp-stc_energy_eff"]),
             _x(r["nvidia-stc_energy_eff"]), _x(r["dstc_energy_eff"]), r["crisp-stc_bound"]] for r in pl["layers"]]
    L += _table(["layer", "M", "K", "N", "density", "CRISP", "NVIDIA", "DSTC", "CRISP E", "NVIDIA E", "DSTC E",
                 "CRISP bound"], rows)

    if "smem_bandwidth_sweep" in r50:
        L += ["", "### Sweeps (ResNet-50, per-layer distribution, 90%)", ""]
        rows = [[k, _x(c["total_speedup"]["crisp-stc"]), _x(c["total_energy_efficiency"]["crisp-stc"]),
                 f"{c['crisp_speedup']['min']:.1f}-{c['crisp_speedup']['max']:.1f}"]
                for k, c in sorted(r50["block_sweep"].items(), key=lambda kv: int(kv[0]))]
        L += ["Block size (2:4):", ""] + _table(["block", "speedup", "energy eff.", "per-layer speedup"], rows)
        rows = [[k, _x(c["total_speedup"]["crisp-stc"]), _x(c["total_energy_efficiency"]["crisp-stc"]),
                 f"{c['crisp_speedup']['min']:.1f}-{c['crisp_speedup']['max']:.1f}",
                 "{}-{}x".format(*PAPER_RANGE[k]), f"{c['layers_in_paper_range']} / 54",
                 _x(c["total_speedup"]["nvidia-stc"])] for k, c in sorted(r50["nm_sweep"].items())]
        L += ["", "N:M (block 64):", ""] + _table(
            ["N:M", "speedup", "energy eff.", "per-layer speedup", "paper", "layers in paper range", "NVIDIA-STC"], rows)
        rows = [[k, _x(v["1:4_b64_total_speedup"]), v["1:4_b64_smem_bound_layers"], _x(v["1:4_b16_total_speedup"]),
                 v["1:4_b16_smem_bound_layers"]] for k, v in r50["smem_bandwidth_sweep"].items()]
        L += ["", "SMEM bandwidth (1:4, both sides of the ratio at the same bandwidth):", ""] + _table(
            ["SMEM B/cycle", "block 64 speedup", "SMEM-bound layers", "block 16 speedup", "SMEM-bound layers"], rows)

    L += ["", "## Other models (global distribution, 2:4, block 64, 90%)", ""]
    rows = []
    for name, m in out["models"].items():
        c = m["comparison"]
        rows.append([name] + [f"{_x(c['total_speedup'][a])} / {_x(c['total_energy_efficiency'][a])}" for a in ARCHS[:-1]]
                    + [f"{c['crisp_speedup']['min']:.1f}-{c['crisp_speedup']['max']:.0f}x"])
    L += _table(["model", "CRISP-STC speed / energy", "NVIDIA-STC", "DSTC", "CRISP per-layer speedup"], rows)

    L += ["", "## Where the model and the paper disagree, and why", ""]
    L += disagreements(out)
    L += ["", "## What the model is (and is not)", "",
          "- Analytical, like Sparseloop (the paper calls Sparseloop cycle-accurate; its own paper says analytical): "
          "per layer, cycles = the busiest of compute, SMEM reads, SMEM writes, DRAM reads, DRAM writes; resources "
          "overlap, layers run one after another. Instruction start/end times come from a fluid schedule that "
          "stretches each unit's instructions over the layer; they satisfy the totals but are not a pipeline "
          "simulation.",
          "- Only conv and linear layers are simulated (BatchNorm is folded; ReLU, pooling, additions are not "
          "counted). Activations come from DRAM once per layer as the input feature map (im2col on chip), "
          "outputs go back once: no fusion between layers.",
          "- SIMD cores share one activation broadcast across their 16 rows, so depthwise convolutions (one row "
          "per group) use 1/16 of a core on TC, NVIDIA-STC and CRISP-STC; that is why MobileNetV2 barely gains.",
          "- NVIDIA-STC stores density <= 0.5 patterns as 2:4 with explicit zeros (its 1:4 = its 2:4) and runs 3:4 "
          "dense; DSTC sees the same weights as unstructured sparsity at their real density.", ""]
    return "\n".join(L) + "\n"


def disagreements(out: dict) -> list[str]:
    r50 = out["resnet50"]
    pl, gl = r50["per_layer_2:4_b64"], r50["global_2:4_b64"]
    L = []
    L.append(f"- **Per-layer speedups track 1/density.** At 42 B/cycle almost every ResNet-50 layer is compute-bound "
             f"on CRISP-STC, so a layer's speedup is its inverse weight density (capped by lane use). With per-layer "
             f"90% masks, {pl['layers_in_paper_range']} of 54 layers fall in the paper's 5-12x for 2:4; the rest are "
             "the K=64/128/147 layers, which block 64 cannot prune below 1 of 1-3 blocks per row (2x-4.6x). With "
             f"the global ranking on random weights, speedups spread from {gl['crisp_speedup']['min']:.0f}x to "
             f"{gl['crisp_speedup']['max']:.0f}x and only {gl['layers_in_paper_range']} layers land in 5-12x. Which "
             "range a layer lands in is set by its mask; the paper's ranges reflect its trained masks, which we "
             "do not have.")
    if "smem_bandwidth_sweep" in r50:
        b = r50["block_sweep"]
        bw = r50["smem_bandwidth_sweep"]
        L.append(f"- **Block size.** The paper finds block 64 best. Here, at 42 B/cycle, 2:4 gives "
                 f"{_x(b['16']['total_speedup']['crisp-stc'])} (block 16), {_x(b['32']['total_speedup']['crisp-stc'])} "
                 f"(32), {_x(b['64']['total_speedup']['crisp-stc'])} (64): smaller blocks let the K=64-256 layers reach "
                 "90%, and SMEM does not bind. Block 64 wins once SMEM bandwidth is scarce: at 21 B/cycle 1:4 gives "
                 f"{_x(bw['21']['1:4_b64_total_speedup'])} with block 64 and {_x(bw['21']['1:4_b16_total_speedup'])} "
                 "with block 16, because a 64-row pass of 16-blocks needs the union of four block-rows' activations. "
                 "The paper's 'fraction of the SMEM bandwidth' is unknown; the ordering depends on it.")
        nm = r50["nm_sweep"]
        L.append(f"- **N:M ranges.** Per-layer CRISP-STC speedup: 1:4 {nm['1:4']['crisp_speedup']['min']:.1f}-"
                 f"{nm['1:4']['crisp_speedup']['max']:.1f}x (paper 7-14x), 2:4 {nm['2:4']['crisp_speedup']['min']:.1f}-"
                 f"{nm['2:4']['crisp_speedup']['max']:.1f}x (5-12x), 3:4 {nm['3:4']['crisp_speedup']['min']:.1f}-"
                 f"{nm['3:4']['crisp_speedup']['max']:.1f}x (2-8x). At a fixed 90% the three patterns keep the same "
                 "number of weights, so our 1:4 and 2:4 differ only through block granularity. 3:4 is slower: a core "
                 "row has 4 multiplier lanes (64 MACs / 16 rows) and one group of 3 fills 3 of them, so 3:4 runs at "
                 "the speed of 4:4 inside kept blocks (lane utilization 0.75) and all its speedup comes from blocks. "
                 "The paper adapts MUX and multiplier counts per pattern without saying how.")
    stages = {}
    for row in pl["layers"]:
        if row["K"] > 3 * 64:  # leave out the layers block 64 cannot prune far
            stages.setdefault(row["layer"].split(".")[0], []).append(row["dstc_speedup"])
    stage_txt = ", ".join(f"{k} {min(v):.1f}-{max(v):.1f}x" for k, v in sorted(stages.items()))
    bounds = ", ".join(f"{k} {v}" for k, v in pl["bounds"]["dstc"].items())
    L.append(f"- **DSTC.** The paper reports 3-8x on early layers and poor later layers (data movement). Our DSTC "
             f"gives {pl['dstc_speedup']['min']:.1f}-{pl['dstc_speedup']['max']:.1f}x per layer with per-layer masks "
             f"(by stage, layers with K > 192: {stage_txt}; bounds: {bounds}). It drifts down in late layers, "
             "where N=49 leaves its 32-wide output tiles partly empty, but it does not become data-bound: with "
             "bitmask-compressed weights and activations at 256 MACs, DRAM and SMEM keep up. We do not reproduce "
             "the paper's late-layer collapse.")
    emax = max(pl["crisp_energy_eff"]["max"], gl["crisp_energy_eff"]["max"])
    comp = pl["energy_uj_by_component"]["crisp-stc"]
    dram_share = comp["dram"] / sum(comp.values())
    L.append(f"- **Energy.** Paper: up to ~30x over dense. Ours: {_x(pl['total_energy_efficiency']['crisp-stc'])} "
             f"for the whole network with per-layer masks (layers up to {_x(pl['crisp_energy_eff']['max'])}), "
             f"{_x(gl['total_energy_efficiency']['crisp-stc'])} with global masks (layers up to {_x(emax)}). "
             f"DRAM is {dram_share:.0%} of CRISP-STC's energy (per-layer masks, batch 1): activations and outputs "
             "move as often as in the dense model, so energy falls less than MACs do.")
    L.append(f"- **NVIDIA-STC** never exceeds 2x in speed or energy (max {_x(max(pl['nvidia_speedup_max'], gl['nvidia_speedup_max']))}) "
             "and runs 3:4 dense (1.0x): agrees with the paper.")
    L.append(f"- **Totals.** CRISP-STC beats all three baselines in total speed and energy in every configuration "
             f"here (ResNet-50 per-layer: {_x(pl['total_speedup']['crisp-stc'])} vs DSTC "
             f"{_x(pl['total_speedup']['dstc'])}, NVIDIA-STC {_x(pl['total_speedup']['nvidia-stc'])}): agrees.")
    return L


if __name__ == "__main__":
    sys.exit(main())
