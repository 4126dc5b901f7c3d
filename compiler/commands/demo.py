"""``crisp demo``: the main job end to end on ResNet-50 (seeded random weights, no downloads).

Compiles to 2:4 inside 32x32 blocks at 90% sparsity, runs the compiled model on a random image,
checks it against the masked dense model, and prints the per-layer report, the totals, the CPU and
ISA path the kernels ran on and the whole-model time against dense torch on this machine.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch

import crisp
from crisp.bench.timing import measure
from crisp.sparsity.masking import relative_error

from crisp.commands.common import add_model_args, add_pattern_args, model_and_input


def register(sub) -> None:
    p = sub.add_parser("demo", help="compile ResNet-50 to 2:4 + 32x32 blocks at 90%% and check it")
    add_model_args(p)
    add_pattern_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print(f"crisp demo: {args.model} (seeded random weights), pattern {args.pattern} in {args.block}x{args.block} blocks, "
          f"target sparsity {args.sparsity}")
    model, x = model_and_input(args)
    compiled = crisp.compile(model, (x,), pattern=args.pattern, block=args.block, sparsity=args.sparsity,
                             seed=args.seed, progress=True)
    kernels = compiled.artifacts.get("cpu_kernels")
    if kernels is not None:
        reason = compiled.artifacts.get("reason")
        path = f" on the {compiled.artifacts['cpu_isa']} path, CPU {compiled.artifacts['cpu']}" if kernels == "fast" else ""
        print(f"target {compiled.target}: {kernels} kernels{path}" + (f" ({reason})" if reason else ""))
        chosen = Counter(c["kernel"] for c in compiled.artifacts.get("kernel_choices", {}).values())
        if chosen:
            print("per-layer kernels (chosen by measurement at compile time; crisp bench shows each layer's times): "
                  + ", ".join(f"{k} {v}" for k, v in chosen.most_common()) + " (dense: torch's own conv / linear)")
    print("running the compiled model and the masked dense model on a random image ...", flush=True)
    y = compiled(x)
    dense = crisp.apply_masks(model, compiled.masks)
    with torch.no_grad():
        y_ref = dense(x)
    err = relative_error(y, y_ref)
    print()
    print(compiled.report.table())
    print()
    print(compiled.report.summary())
    ok = err <= 1e-4
    print(f"check: compiled output vs masked dense model on the random image: relative error {err:.2e} "
          f"({'OK' if ok else 'FAILED'}, tolerance 1e-4); top-1 class {int(y.argmax())} vs {int(y_ref.argmax())}")
    with torch.no_grad():
        mine, theirs = measure(lambda: compiled(x), budget_s=1.0), measure(lambda: dense(x), budget_s=1.0)
    print(f"time ({torch.get_num_threads()} threads, batch {x.shape[0]}, medians): compiled {mine.median_ms:.1f} ms vs "
          f"dense torch {theirs.median_ms:.1f} ms ({theirs.median_ms / mine.median_ms:.2f}x)")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0 if ok else 1
