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
from crisp.backends import BackendInput, get_backend
from crisp.compiled_model import CompiledModel
from crisp.fileio import atomic_write_bytes, atomic_write_text
from crisp.models import build
from crisp.models.registry import input_shape
from crisp.runtime import cpu_capability as isa
from crisp.runtime import fast_kernel
from crisp.bench import cpu_peers as cpu_bench
from crisp.bench.kernel_alternatives import kernel_alternatives
from crisp.bench.timing import interleaved

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_runtime_report import TARGET, TARGET_LAYER_EFFICIENCY, check_targets, lookup, markdown  # noqa: E402

RESULTS = Path(__file__).parent / "results"


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
    p.add_argument("--isa", default=None,
                   help="force ISA paths (CRISP_CPU_CAPABILITY), e.g. avx2 or avx512,avx2: each compile is lowered "
                        "once per path (same masks), the dense peers timed once and shared; results of a path other "
                        "than the best one are written as cpu_runtime_<isa>.*")
    args = p.parse_args(argv)
    args.isas = [i.strip() for i in (args.isa or fast_kernel.cpu_capability()).split(",") if i.strip()]
    bad = [i for i in args.isas if i not in isa.CAPABILITIES]
    if bad:
        p.error(f"--isa: unknown path(s) {bad}; choose from {', '.join(isa.CAPABILITIES)}")
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
    if batch == 1 and threads == max(int(t) for t in args.threads.split(",")) and sparsity == TARGET["sparsity"] \
            and block == TARGET["block"]:
        out["interleaved"].append({"model": name, "block": block, "sparsity": sparsity, "batch": batch,
                                   "threads": threads, **with_threads(threads, lambda: interleaved_timing(model, compiled, x, threads,
                                                                                                   args.budget))})
    if config == tuple(TARGET.values()) and args.alternatives:
        out["alternatives"].extend(with_threads(threads, lambda: kernel_alternatives(
            model, compiled, x, budget_s=min(args.budget, 0.5))))
    if wants_layers(args, name, block, sparsity, batch, threads):
        layers = with_threads(threads, lambda: cpu_bench.per_layer_times(model, compiled, x,
                                                                         budget_s=min(args.budget, 0.5), min_runs=5))
        out["layers"].append({"model": name, "block": block, "sparsity": sparsity, "batch": batch,
                              "threads": threads, "layers": [t.as_dict() for t in layers]})


def interleaved_timing(model, compiled, x, threads: int, budget_s: float) -> dict:
    """crisp alone and with torch and onnxruntime dense run between its calls in the same loop."""
    peers = {m: cpu_bench._runner(m, model, x, compiled, 0, threads) for m in cpu_bench.DENSE_METHODS}
    with torch.no_grad():
        return interleaved(lambda: compiled(x), peers, budget_s=2 * budget_s)


def lowered_for(path: str, compiled, x):
    """The same compiled model (masks, lowered graph) on the cpu backend of ISA path ``path``."""
    os.environ[isa.CAPABILITY_ENV] = path
    if compiled.artifacts.get("cpu_isa") == path:
        return compiled
    out = get_backend("cpu")(BackendInput(compiled.graph_module, compiled.layers, (x,), {}))
    other = CompiledModel(out.module, compiled.graph_module, compiled.layers, compiled.report, "cpu", out.artifacts)
    other.input_spec = compiled.input_spec
    return other


def run_grid(args, on_model_done=None) -> dict:
    models = args.models.split(",")
    blocks = [int(b) for b in args.blocks.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    threads_list = [int(t) for t in args.threads.split(",")]
    methods = tuple(args.methods.split(","))
    by_isa = {path: {"records": [], "layers": [], "memory": [], "alternatives": [], "interleaved": []}
              for path in args.isas}
    out = by_isa[args.isas[0]]
    records = out["records"]
    dense_cache: dict[tuple, dict] = {}
    settings, done, grid_start = len(models) * len(blocks) * len(sparsities), 0, time.perf_counter()
    for name in models:
        model = build(name, seed=0)
        shape = input_shape(name)
        gen = torch.Generator().manual_seed(0)
        inputs = {b: torch.randn(b, *shape, generator=gen) for b in batches}
        for block in blocks:
            for sparsity in sparsities:
                t0 = time.perf_counter()
                done += 1
                os.environ[isa.CAPABILITY_ENV] = args.isas[0]
                compiled = crisp.compile(model, (inputs[batches[0]],), target="cpu", pattern="2:4", block=block,
                                         sparsity=sparsity, verify=False)
                compile_s = time.perf_counter() - t0
                variants = {path: lowered_for(path, compiled, inputs[batches[0]]) for path in args.isas}
                place = f"[{done}/{settings}, {(t0 - grid_start) / 60:.1f} min so far]"
                print(f"{place} {name} B{block} s{sparsity}: compiled in {compile_s:.1f}s (+ {len(variants) - 1} other path(s) in "
                      f"{time.perf_counter() - t0 - compile_s:.1f}s), achieved sparsity {compiled.sparsity:.4f}, kernels "
                      f"{compiled.artifacts.get('cpu_kernels')}", flush=True)
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
                        config = (name, block, sparsity, batch, threads)
                        for path, variant in variants.items():
                            os.environ[isa.CAPABILITY_ENV] = path
                            if variant is not compiled:  # the dense peers are the same for every path
                                mine = cpu_bench.compare_model(model, inputs[batch], variant, block=block, threads=threads,
                                                               methods=("crisp_cpu",), budget_s=args.budget)["crisp_cpu"]
                                by_isa[path]["records"].extend({**r, **mine} if r["method"] == "crisp_cpu" else r
                                                               for r in records[-len(methods):])
                                line += f", crisp_cpu[{path}] {mine.get('median_ms', float('nan')):.1f}"
                            record_extras(args, by_isa[path], model, variant, inputs[batch], config,
                                          last_threads=threads == threads_list[-1])
                        print(f"  batch {batch}, {threads} thread(s): {line} (ms)", flush=True)
                del compiled, variants
        if on_model_done is not None:  # write what we have: a long run that dies keeps its finished models
            on_model_done(by_isa)
    return by_isa


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
    datas = {}
    for path in args.isas:
        os.environ[isa.CAPABILITY_ENV] = path
        if not fast_kernel.available():
            print(f"fast kernels unavailable: {fast_kernel.unavailable_reason()}", file=sys.stderr)
        datas[path] = {"environment": environment(), "config": vars(args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write(by_isa: dict) -> None:
        for path, results in by_isa.items():
            data = datas[path]
            data.update(results)
            data["environment"]["load_average_end"] = os.getloadavg()
            data["targets"] = check_targets(data)
            write_results(data, out)

    write(run_grid(args, on_model_done=write))
    for data in datas.values():
        print(f"\nwrote {out / result_stem(data)}.json, .md and .png ({data['environment']['cpu_isa']} path)")
        for t in data["targets"]:
            status = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
            print(f"  {t['target']}: {t['value']} {t.get('detail', '')} -> {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
