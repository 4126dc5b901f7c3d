"""``crisp bench``: time a compiled in-project model on the CPU against its dense and sparse peers,
whole model and layer by layer (wall clock, medians after warm-up)."""

from __future__ import annotations

import argparse
import json

import torch

import crisp

from crisp.commands.common import add_model_args, add_pattern_args, model_and_input


def register(sub) -> None:
    p = sub.add_parser("bench", help="time the cpu target against torch, onnxruntime and sparse peers")
    add_model_args(p)
    add_pattern_args(p)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help=f"intra-op threads for every method (default {torch.get_num_threads()})")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of torch_dense,onnxruntime_dense,torch_bsr,scipy_bsr,crisp_reference,crisp_cpu")
    p.add_argument("--no-per-layer", dest="per_layer", action="store_false", help="skip the per-layer table")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per method (default 3)")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON to PATH")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crisp.errors import CrispError
    from crisp.bench import cpu_peers as cpu_bench

    methods = cpu_bench.METHODS if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in cpu_bench.METHODS]
    if unknown:
        raise CrispError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(cpu_bench.METHODS)}")
    if args.threads < 1:
        raise CrispError(f"--threads must be at least 1, got {args.threads}")
    model, x = model_and_input(args)
    compiled = crisp.compile(model, (x,), target="cpu", pattern=args.pattern, block=args.block, sparsity=args.sparsity,
                             seed=args.seed, verify=False, progress=True)  # bench checks the outputs itself
    if compiled.artifacts.get("cpu_kernels") != "fast":
        print(f"note: fast kernels unavailable ({compiled.artifacts.get('reason')}); crisp_cpu is skipped")
        methods = tuple(m for m in methods if m != "crisp_cpu")
    print(f"\n{args.model}, input {tuple(x.shape)}, pattern {args.pattern} in {args.block}x{args.block} blocks, "
          f"sparsity {compiled.sparsity:.3f}, {args.threads} thread(s)")
    if compiled.artifacts.get("cpu_kernels") == "fast":
        print(f"CPU {compiled.artifacts['cpu']}, kernel path {compiled.artifacts['cpu_isa']} "
              f"(CRISP_CPU_CAPABILITY forces avx512, avx2 or default)")
    print()
    results = cpu_bench.compare_model(model, x, compiled, block=args.block, threads=args.threads, methods=methods,
                                      budget_s=args.budget)
    print(cpu_bench.model_table(results))
    layers = []
    if args.per_layer and compiled.artifacts.get("cpu_kernels") == "fast":
        before = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            layers = cpu_bench.per_layer_times(model, compiled, x, budget_s=min(args.budget, 0.5), min_runs=5)
        finally:
            torch.set_num_threads(before)
        print("\nper layer (dense: best of torch NCHW and channels_last, BN folded; limit = dense x kept density)\n")
        print(cpu_bench.layer_table(layers))
        total = {k: sum(getattr(t, k) for t in layers) for k in ("dense_ms", "crisp_ms", "limit_ms")}
        print(f"\nsum over layers: dense {total['dense_ms']:.2f} ms, crisp {total['crisp_ms']:.2f} ms, "
              f"block-skip limit {total['limit_ms']:.2f} ms ({total['limit_ms'] / max(total['crisp_ms'], 1e-9):.0%} of it reached)")
    if args.json:
        payload = {"model": args.model, "input": list(x.shape), "pattern": args.pattern, "block": args.block,
                   "sparsity": compiled.sparsity, "threads": args.threads, "methods": results,
                   "layers": [t.as_dict() for t in layers]}
        from crisp.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(payload, indent=2))
        print(f"numbers written to {args.json}")
    return 0
