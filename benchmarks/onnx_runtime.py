"""onnxruntime on crisp's ONNX outputs against the dense input (not a test).

Models (in-project, seeded random weights, 224x224, symbolic batch): ResNet-50, VGG-16 and MobileNetV2
exported with torch.onnx.export's TorchScript exporter at opset 17, and MobileNetV2 (depthwise convs in
torchvision's inverted residual layout) and ResNet-50 exported with torch's dynamo
exporter (its default: value_info written; ``name:dynamo``). Each is optimized by ``crisp.optimize_onnx``
at 2:4, 32x32 blocks, 90 % sparsity (magnitude saliency). Variants, in one process with 2 intra-op threads:

- ``dense input``: the exported model;
- ``dense output``: ``format="dense"`` (zeros in place, same graph);
- ``compact``: ``format="compact"`` as crisp writes it by default (``body="auto"``): each layer either
  gathers the kept input columns per block-row and multiplies the kept blocks, or, where the cost model
  says that is slower, decodes the dense weight once at load and runs the standard op;
- ``compact, measured``: ``body="measure"``: the same choice made by timing both forms of each layer
  in onnxruntime; its per-layer times are the measured cause of every miss.

Per variant: file size, session creation (load) time, the median wall-clock time of repeated runs at
batch 1 and 8 after warm-up (variants timed round-robin, so that load from other processes hits them
alike), and, contention-robust, the CPU time of one run at 1 thread (median of a few) per batch. The load
average is recorded at the start and the end: run it alone, e.g. under ``flock /work/notes/bench.lock``.
Writes ``benchmarks/results/onnx_runtime.{json,md}``.

    python benchmarks/onnx_runtime.py             # every model (about 10 minutes)
    python benchmarks/onnx_runtime.py --quick     # MobileNetV2, batch 1 only
    python benchmarks/onnx_runtime.py --models resnet50 vgg16 --batches 1   # a reduced run
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import crisp.models
from crisp.fileio import atomic_write_text
from crisp.onnx.io import save_model
from crisp.onnx.optimize import optimize_onnx_with_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_runtime_report import cpu_name, layer_causes, markdown, targets  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet50", "vgg16", "mobilenet_v2", "mobilenet_v2:dynamo", "resnet50:dynamo")  # name[:exporter]
VARIANTS = {"dense output": {"format": "dense"}, "compact": {}, "compact, measured": {"body": "measure"}}
THREADS = 2
REPEATS = {1: 12, 8: 4}
CPU_REPEATS = 3


def export(spec: str, folder: Path) -> Path:
    """Export ``name`` or ``name:dynamo`` at 224x224 with a symbolic batch; return the file."""
    name, _, exporter = spec.partition(":")
    model = crisp.models.build(name).eval()
    path = folder / f"{name}.{exporter or 'torchscript'}.onnx"
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["image"], output_names=["logits"],
                                        dynamic_shapes={"x": {0: torch.export.Dim("n")}}, verbose=False)
            path.write_bytes(program.model_proto.SerializeToString())
            return path
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    path.write_bytes(buffer.getvalue())
    return path


def session(path: Path, threads: int = THREADS, spinning: bool = True) -> tuple[ort.InferenceSession, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    start = time.perf_counter()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess, time.perf_counter() - start


def optimize_variants(name: str, src: Path, folder: Path, entry: dict) -> dict[str, Path]:
    paths = {"dense input": src}
    for variant, kwargs in VARIANTS.items():
        print(f"[{name}] optimize -> {variant}", flush=True)
        result = optimize_onnx_with_report(src, pattern="2:4", block=32, sparsity=0.9, progress=False, **kwargs)
        paths[variant] = save_model(result.model, folder / f"{name}.{variant.replace(', ', '_').replace(' ', '_')}.onnx")
        r = result.report
        entry["variants"][variant] = {"optimize_seconds": r.seconds}
        if variant == "compact":
            size = paths[variant].stat().st_size
            entry.update(
                achieved_sparsity=r.achieved_sparsity, pruned_layers=len(r.pruned_layers), layers=len(r.layers),
                dense_weight_bytes=r.dense_weight_bytes, metadata_bytes=r.metadata_bytes,
                size_bound_bytes=r.size_bound(), size_rule_holds=size <= r.size_bound(),
                layers_on_blocks=sum(1 for layer in r.pruned_layers if layer.execution == "blocks"),
                value_info_entries=len(onnx.load(str(src), load_external_data=False).graph.value_info),
                cost_model_choice={layer.name: layer.execution for layer in r.pruned_layers},
            )
        if variant == "compact, measured":
            entry["layer_timings"] = {f"b{b}": layer_causes(r, entry.get("cost_model_choice", {}), b) for b in (1, 8)}
            entry["layers_on_blocks_measured"] = sum(1 for layer in r.pruned_layers if layer.execution == "blocks")
        del result
    return paths


def time_batches(name: str, sessions: dict, entry: dict, batches: tuple[int, ...]) -> None:
    """Median wall-clock ms per variant and batch, round-robin, with the agreement with the dense output."""
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        outs = {v: s.run(None, {"image": x})[0] for v, s in sessions.items()}  # warm-up + agreement
        ref = outs["dense output"]
        for v, out in outs.items():
            if v != "dense input":
                entry["variants"][v][f"max_rel_err_vs_dense_output_b{batch}"] = float(np.abs(out - ref).max() / np.abs(ref).max())
        times: dict[str, list[float]] = {v: [] for v in sessions}
        for _ in range(REPEATS[batch]):
            for v, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {"image": x})
                times[v].append(time.perf_counter() - start)
        base = 1e3 * statistics.median(times["dense input"])
        for v, ts in times.items():
            d = entry["variants"][v]
            d[f"median_ms_b{batch}"], d[f"min_ms_b{batch}"], d[f"runs_b{batch}"] = 1e3 * statistics.median(ts), 1e3 * min(ts), len(ts)
            d[f"speedup_b{batch}"] = base / d[f"median_ms_b{batch}"]
        print(f"[{name}] batch {batch}: " + ", ".join(f"{v} {entry['variants'][v][f'median_ms_b{batch}']:.1f} ms" for v in sessions),
              flush=True)


def time_cpu(name: str, paths: dict[str, Path], entry: dict, batches: tuple[int, ...]) -> None:
    """CPU ms of one run at 1 thread, spinning off (other processes barely change it), per batch."""
    sessions = {v: session(p, threads=1, spinning=False)[0] for v, p in paths.items()}
    for batch in batches:
        x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        for s in sessions.values():
            s.run(None, {"image": x})
        cpu: dict[str, list[float]] = {v: [] for v in sessions}
        for _ in range(CPU_REPEATS):
            for v, s in sessions.items():
                start = time.thread_time()
                s.run(None, {"image": x})
                cpu[v].append(time.thread_time() - start)
        base = statistics.median(cpu["dense input"])
        for v, ts in cpu.items():
            entry["variants"][v][f"cpu_ms_1thread_b{batch}"] = 1e3 * statistics.median(ts)
            entry["variants"][v][f"cpu_speedup_1thread_b{batch}"] = base / statistics.median(ts)
        print(f"[{name}] 1-thread CPU ms, batch {batch}: "
              + ", ".join(f"{v} {entry['variants'][v][f'cpu_ms_1thread_b{batch}']:.1f}" for v in sessions), flush=True)


def bench_model(name: str, folder: Path, batches: tuple[int, ...]) -> dict:
    print(f"[{name}] export", flush=True)
    entry: dict = {"model": name, "variants": {}}
    src = export(name, folder)
    paths = optimize_variants(name, src, folder, entry)
    entry["variants"] = {"dense input": {}, **entry["variants"]}
    sessions = {}
    for variant, path in paths.items():
        loads = []
        for _ in range(2):
            sess, seconds = session(path)
            loads.append(seconds)
        sessions[variant] = sess
        entry["variants"][variant].update(file_bytes=path.stat().st_size, load_seconds=min(loads))
    time_batches(name, sessions, entry, batches)
    del sessions
    time_cpu(name, paths, entry, batches)
    for path in paths.values():
        path.unlink(missing_ok=True)
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 at batch 1 only")
    parser.add_argument("--models", nargs="*", default=None, choices=MODELS)
    parser.add_argument("--batches", nargs="*", type=int, default=None, choices=sorted(REPEATS), help="batch sizes (default 1 8)")
    parser.add_argument("--out", default=str(RESULTS), help="folder of the results (default benchmarks/results)")
    args = parser.parse_args()
    models = ["mobilenet_v2"] if args.quick else (args.models or list(MODELS))
    batches = (1,) if args.quick else tuple(args.batches or (1, 8))
    reduced = tuple(models) != MODELS or batches != (1, 8)
    torch.set_num_threads(THREADS)
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "onnxruntime": ort.__version__, "onnx": onnx.__version__,
        "torch": torch.__version__, "threads": THREADS, "machine": f"{cpu_name()}, {os.cpu_count()} CPUs",
        "load_average_start": os.getloadavg(),
        "scope": (f"Reduced run: models {', '.join(models)}, batches {', '.join(map(str, batches))}." if reduced else "Full run."),
        "pattern": "2:4", "block": 32, "sparsity": 0.9, "models": [], "targets": [],
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crisp-onnx-bench-") as tmp:
        for name in models:
            results["models"].append(bench_model(name, Path(tmp), batches))
    results["targets"] = targets(results["models"])
    results["load_average_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "onnx_runtime.json", json.dumps(results, indent=2))
    atomic_write_text(out / "onnx_runtime.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
