"""CPU runtime benchmark: crisp's ``cpu`` target against every CPU peer (not a test).

For ResNet-50, MobileNetV2 and VGG-16 at 2:4 with blocks 32 and 64 and sparsity 0.8/0.9/0.95, at
batch 1 and 8 and 1 and 2 threads, in one process, medians of repeated wall-clock runs after
warm-up: torch dense (eager, channels_last, BN folded), onnxruntime dense (all graph
optimizations), torch sparse BSR and scipy BSR on the same masks, crisp reference, crisp cpu; and
per layer, each pruned layer's time against the ideal block-skip limit (dense layer time x kept
density). Writes ``benchmarks/results/cpu_runtime.{json,md,png}`` and checks the issue's targets
(ResNet-50, 90 %, 2:4, batch 1, 2 threads), reporting every miss with its number.

    python benchmarks/cpu_runtime.py                     # the full grid (long: tens of minutes)
    python benchmarks/cpu_runtime.py --quick             # ResNet-50 target configuration only
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import crisp
from crisp.fileio import atomic_write_bytes, atomic_write_text
from crisp.models import build
from crisp.models.registry import input_shape
from crisp.runtime import cpu_capability as isa
from crisp.runtime import fast_kernel
from crisp.bench import cpu_peers as cpu_bench
from crisp.bench.kernel_alternatives import kernel_alternatives

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_runtime_report import TARGET_LAYER_EFFICIENCY, lookup, markdown  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TARGET = {"model": "resnet50", "block": 32, "sparsity": 0.9, "batch": 1, "threads": 2}
TARGET_SPEEDUPS = {"onnxruntime_dense": 3.0, "torch_dense": 5.0, "torch_bsr": 2.0, "scipy_bsr": 2.0}
ORT_TARGET = {"avx512": 4.0, "avx2": 3.0}  # the onnxruntime target per ISA path (the portable path: the AVX2 one)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2,vgg16")
    p.add_argument("--blocks", default="32,64")
    p.add_argument("--sparsities", default="0.8,0.9,0.95")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--methods", default=",".join(cpu_bench.METHODS))
    p.add_argument("--reference", default="target", choices=("target", "batch1", "all"),
                   help="where the (slow) reference kernel is timed: the target block/sparsity at batch 1 (default), "
                        "every batch-1 configuration, or everywhere")
    p.add_argument("--big-batch-blocks", default="32",
                   help="blocks for which batches other than 1 are timed (default 32; 'all' for every block)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per measurement (default 2)")
    p.add_argument("--per-layer", default="target", choices=("target", "sparsity0.9", "all", "none"),
                   help="which configurations get per-layer times (default: the target one, at each thread count)")
    p.add_argument("--no-alternatives", dest="alternatives", action="store_false",
                   help="skip timing the kernel alternatives (C++ kernels vs vectorized torch vs reference)")
    p.add_argument("--quick", action="store_true", help="only the target configuration (ResNet-50, B32, 90%%, batch 1, 2 threads)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--isa", default=None, choices=isa.CAPABILITIES,
                   help="force one ISA path (CRISP_CPU_CAPABILITY); results of a path other than the best one are "
                        "written as cpu_runtime_<isa>.*")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.blocks, args.sparsities, args.batches, args.threads = "resnet50", "32", "0.9", "1", "2"
    return args


def environment() -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    import numpy
    import onnxruntime
    import scipy

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "scipy": scipy.__version__, "numpy": numpy.__version__, "crisp_commit": run(["git", "rev-parse", "--short", "HEAD"]),
        "fast_kernels": fast_kernel.available(), "cpu_isa": fast_kernel.cpu_capability(), "cpu_paths": list(isa.supported()),
        "cpu_flags": " ".join(sorted(isa.cpu_flags())),
        "load_average_start": os.getloadavg(),
    }


def wants_layers(args, model, block, sparsity, batch, threads) -> bool:
    if args.per_layer == "none":
        return False
    if args.per_layer == "target":  # the target configuration, at every thread count timed
        return (model, block, sparsity, batch) == tuple(TARGET.values())[:4]
    if args.per_layer == "sparsity0.9":
        return sparsity == 0.9 and batch == 1 and threads == max(int(t) for t in args.threads.split(","))
    return True


def with_threads(threads: int, fn):
    """``fn()`` with torch's thread count set to ``threads``, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def record_extras(args, out: dict, model, compiled, x, config: tuple, *, last_threads: bool) -> None:
    """Memory, kernel alternatives and per-layer times, for the configurations that take them."""
    name, block, sparsity, batch, threads = config
    if (block, sparsity, batch) == (TARGET["block"], TARGET["sparsity"], 1) and last_threads:
        dense = cpu_bench.fold_batchnorm(model).to(memory_format=torch.channels_last)
        out["memory"].append({
            "model": name, "block": block, "sparsity": sparsity, "batch": batch,
            "torch_dense": cpu_bench.memory_footprint(dense, x.contiguous(memory_format=torch.channels_last)),
            "crisp_cpu": cpu_bench.memory_footprint(compiled.module, x),
        })
    if config == tuple(TARGET.values()) and args.alternatives:
        out["alternatives"].extend(with_threads(threads, lambda: kernel_alternatives(
            model, compiled, x, budget_s=min(args.budget, 0.5))))
    if wants_layers(args, name, block, sparsity, batch, threads):
        layers = with_threads(threads, lambda: cpu_bench.per_layer_times(model, compiled, x,
                                                                         budget_s=min(args.budget, 0.5), min_runs=5))
        out["layers"].append({"model": name, "block": block, "sparsity": sparsity, "batch": batch,
                              "threads": threads, "layers": [t.as_dict() for t in layers]})


def run_grid(args, on_model_done=None) -> dict:
    models = args.models.split(",")
    blocks = [int(b) for b in args.blocks.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    threads_list = [int(t) for t in args.threads.split(",")]
    methods = tuple(args.methods.split(","))
    out = {"records": [], "layers": [], "memory": [], "alternatives": []}
    records = out["records"]
    dense_cache: dict[tuple, dict] = {}
    for name in models:
        model = build(name, seed=0)
        shape = input_shape(name)
        gen = torch.Generator().manual_seed(0)
        inputs = {b: torch.randn(b, *shape, generator=gen) for b in batches}
        for block in blocks:
            for sparsity in sparsities:
                t0 = time.perf_counter()
                compiled = crisp.compile(model, (inputs[batches[0]],), target="cpu", pattern="2:4", block=block,
                                         sparsity=sparsity, verify=False)
                compile_s = time.perf_counter() - t0
                print(f"{name} B{block} s{sparsity}: compiled in {compile_s:.1f}s, achieved sparsity "
                      f"{compiled.sparsity:.4f}, kernels {compiled.artifacts.get('cpu_kernels')}", flush=True)
                for batch in batches:
                    for threads in threads_list:
                        key = (name, batch, threads)
                        if batch != 1 and args.big_batch_blocks != "all" and str(block) not in args.big_batch_blocks.split(","):
                            continue
                        is_target = (block, sparsity) == (TARGET["block"], TARGET["sparsity"])
                        # dense peers are timed once per model/batch/threads, and again in the target
                        # configuration, right before crisp
                        wanted = [m for m in methods if m not in cpu_bench.DENSE_METHODS or key not in dense_cache
                                  or is_target]
                        timed_reference = args.reference == "all" or (batch == 1 and (
                            args.reference == "batch1" or (block, sparsity) == (TARGET["block"], TARGET["sparsity"])))
                        if not timed_reference:
                            wanted = [m for m in wanted if m != "crisp_reference"]
                        single = lookup(records, model=name, block=block, sparsity=sparsity, batch=batch, threads=1,
                                        method="scipy_bsr")
                        if threads > 1 and single is not None:  # scipy.sparse runs on one thread whatever we ask
                            wanted = [m for m in wanted if m != "scipy_bsr"]
                        res = cpu_bench.compare_model(model, inputs[batch], compiled, block=block, threads=threads,
                                                      methods=wanted, budget_s=args.budget)
                        dense_cache.setdefault(key, {m: res[m] for m in cpu_bench.DENSE_METHODS if m in res})
                        res.update({m: dense_cache[key][m] for m in cpu_bench.DENSE_METHODS if m in methods and m not in res})
                        if "crisp_reference" in methods and "crisp_reference" not in res:
                            res["crisp_reference"] = {"skipped": f"reference kernel timed only where --reference={args.reference} asks"}
                        if "scipy_bsr" in methods and "scipy_bsr" not in res:
                            res["scipy_bsr"] = {k: v for k, v in single.items() if k not in ("threads", "method", "model", "block",
                                                                                            "sparsity", "batch", "achieved_sparsity")}
                            res["scipy_bsr"]["note"] = "single-threaded: the 1-thread measurement"
                        for method in methods:
                            records.append({"model": name, "block": block, "sparsity": sparsity,
                                            "achieved_sparsity": compiled.sparsity, "batch": batch, "threads": threads,
                                            "method": method, **res[method]})
                        line = ", ".join(f"{m} {res[m]['median_ms']:.1f}" for m in methods if "median_ms" in res[m])
                        print(f"  batch {batch}, {threads} thread(s): {line} (ms)", flush=True)
                        record_extras(args, out, model, compiled, inputs[batch], (name, block, sparsity, batch, threads),
                                      last_threads=threads == threads_list[-1])
                del compiled
        if on_model_done is not None:  # write what we have: a long run that dies keeps its finished models
            on_model_done(out)
    return out


def check_targets(data) -> list[dict]:
    """Each target of the issue with its measured value; ``met`` is None when it was not measured."""
    out = []
    base = {k: TARGET[k] for k in ("model", "block", "sparsity", "batch", "threads")}
    cpu = lookup(data["records"], **base, method="crisp_cpu")
    speedups = {**TARGET_SPEEDUPS, "onnxruntime_dense": ORT_TARGET.get(data["environment"].get("cpu_isa"), 3.0)}
    for method, need in speedups.items():
        peer = lookup(data["records"], **base, method=method)
        if cpu is None or peer is None or "median_ms" not in cpu or "median_ms" not in peer:
            out.append({"target": f"ResNet-50 >= {need:g}x faster than {method}", "value": None, "met": None})
            continue
        speedup = peer["median_ms"] / cpu["median_ms"]
        out.append({"target": f"ResNet-50 >= {need:g}x faster than {method}", "value": round(speedup, 2),
                    "detail": f"{peer['median_ms']:.2f} ms vs {cpu['median_ms']:.2f} ms", "met": speedup >= need})
    one = {**base, "threads": 1}
    cpu1 = lookup(data["records"], **one, method="crisp_cpu")
    for method, need in TARGET_SPEEDUPS.items():  # the same at 1 thread in CPU time: robust on a shared machine
        peer = lookup(data["records"], **one, method=method)
        if cpu1 and peer and "cpu_median_ms" in cpu1 and "cpu_median_ms" in peer:
            speedup = peer["cpu_median_ms"] / cpu1["cpu_median_ms"]
            out.append({"target": f"(1 thread, CPU time, informative) ResNet-50 >= {need:g}x faster than {method}",
                        "value": round(speedup, 2), "detail": f"{peer['cpu_median_ms']:.2f} ms vs {cpu1['cpu_median_ms']:.2f} ms",
                        "met": speedup >= need})
    for mem in data.get("memory", []):
        if mem["model"] == TARGET["model"]:
            d, c = mem["torch_dense"]["total_bytes"], mem["crisp_cpu"]["total_bytes"]
            out.append({"target": "ResNet-50 peak inference memory <= dense", "value": round(c / d, 3),
                        "detail": f"{c / 1e6:.1f} MB vs {d / 1e6:.1f} MB", "met": c <= d})
    layers = next((lr["layers"] for lr in data["layers"] if all(lr[k] == v for k, v in base.items())), None)
    for kind in ("conv1x1", "conv3x3"):
        if layers is None:
            out.append({"target": f"every ResNet-50 {kind} layer >= 70% of the block-skip limit", "value": None, "met": None})
            continue
        mine = [t for t in layers if t["kind"] == kind]
        below = [t for t in mine if t["efficiency"] < TARGET_LAYER_EFFICIENCY]
        total = sum(t["limit_ms"] for t in mine) / sum(t["crisp_ms"] for t in mine)
        worst = min(mine, key=lambda t: t["efficiency"])
        out.append({
            "target": f"every ResNet-50 {kind} layer >= 70% of the block-skip limit",
            "value": round(min(t["efficiency"] for t in mine), 3),
            "detail": f"{len(below)} of {len(mine)} layers below 70%; worst {worst['name']} at {worst['efficiency']:.0%}; "
                      f"all {kind} layers together reach {total:.0%}",
            "met": not below,
        })
    one_thread = next((lr["layers"] for lr in data["layers"] if all(lr[k] == v for k, v in one.items())), None)
    readings = (  # (label, layers, limit of a layer, crisp time of a layer)
        ("(informative: limit = dense x kept-block share) every ResNet-50 {kind} layer >= 70%", layers,
         lambda t: t["dense_ms"] * t["block_density"], lambda t: t["crisp_ms"]),
        ("(1 thread, CPU time, informative) every ResNet-50 {kind} layer >= 70% of the block-skip limit", one_thread,
         lambda t: t["dense_cpu_ms"] * t["density"], lambda t: t["crisp_cpu_ms"]),
    )
    for label, rows, limit, took in readings:
        for kind in ("conv1x1", "conv3x3"):
            mine = [t for t in rows or [] if t["kind"] == kind and limit(t) == limit(t) and took(t) == took(t)]
            if mine:
                out.append(_layer_target(label.format(kind=kind), kind, {t["name"]: (limit(t), took(t)) for t in mine}))
    return out


def _layer_target(label: str, kind: str, times: dict[str, tuple[float, float]]) -> dict:
    """A per-layer target line from {layer: (limit ms, crisp ms)}; NaN-free input."""
    eff = {name: lim / took for name, (lim, took) in times.items()}
    below = [n for n, e in eff.items() if e < TARGET_LAYER_EFFICIENCY]
    worst = min(eff, key=eff.get)
    total = sum(lim for lim, _ in times.values()) / sum(took for _, took in times.values())
    return {"target": label, "value": round(eff[worst], 3),
            "detail": f"{len(below)} of {len(eff)} layers below 70%; worst {worst} at {eff[worst]:.0%}; "
                      f"all {kind} layers together reach {total:.0%}",
            "met": not below}


def plot(data) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = data["records"]
    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(1, len(models) + (1 if data["layers"] else 0), figsize=(5 * (len(models) + 1), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models):
        rows = [r for r in records if r["model"] == name and "median_ms" in r and r["batch"] == TARGET["batch"]
                and r["threads"] == max(x["threads"] for x in records) and r["sparsity"] == TARGET["sparsity"]]
        blocks = sorted({r["block"] for r in rows})
        block = TARGET["block"] if TARGET["block"] in blocks else (blocks[0] if blocks else None)
        rows = [r for r in rows if r["block"] == block]
        ax.bar([r["method"].replace("_", "\n") for r in rows], [r["median_ms"] for r in rows],
               color=["#d62728" if r["method"] == "crisp_cpu" else "#7f7f7f" for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"{name}, B={block}, 90%, batch {TARGET['batch']}, {rows[0]['threads'] if rows else '?'} thr")
        ax.tick_params(axis="x", labelsize=7)
    if data["layers"]:
        ax = axes[0][-1]
        lr = data["layers"][0]
        for kind, color in (("conv1x1", "#1f77b4"), ("conv3x3", "#ff7f0e")):
            pts = [t for t in lr["layers"] if t["kind"] == kind]
            ax.scatter([t["density"] for t in pts], [t["efficiency"] for t in pts], label=kind, color=color)
        others = [t for t in lr["layers"] if t["kind"] not in ("conv1x1", "conv3x3")]
        ax.scatter([t["density"] for t in others], [t["efficiency"] for t in others], label="other", color="#2ca02c")
        ax.axhline(TARGET_LAYER_EFFICIENCY, color="k", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("kept density")
        ax.set_ylabel("block-skip limit / crisp time")
        ax.set_title(f"{lr['model']} per layer (B={lr['block']}, {lr['sparsity']})")
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def result_stem(data: dict) -> str:
    """``cpu_runtime`` for the best path of the CPU, ``cpu_runtime_<isa>`` for a forced lower one."""
    env = data["environment"]
    return "cpu_runtime" if env["cpu_isa"] == env["cpu_paths"][0] else f"cpu_runtime_{env['cpu_isa']}"


def write_results(data: dict, out: Path) -> None:
    stem = result_stem(data)
    atomic_write_text(out / f"{stem}.json", json.dumps(data, indent=1))
    atomic_write_text(out / f"{stem}.md", markdown(data))
    atomic_write_bytes(out / f"{stem}.png", plot(data))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.isa:
        os.environ[isa.CAPABILITY_ENV] = args.isa
    if not fast_kernel.available():
        print(f"fast kernels unavailable: {fast_kernel.unavailable_reason()}", file=sys.stderr)
    data = {"environment": environment(), "config": vars(args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write(results: dict) -> None:
        data.update(results)
        data["environment"]["load_average_end"] = os.getloadavg()
        data["targets"] = check_targets(data)
        write_results(data, out)

    write(run_grid(args, on_model_done=write))
    print(f"\nwrote {out / result_stem(data)}.json, .md and .png ({data['environment']['cpu_isa']} path)")
    for t in data["targets"]:
        status = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"  {t['target']}: {t['value']} {t.get('detail', '')} -> {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
