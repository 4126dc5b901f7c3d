"""``crisp simulate``: simulate an in-project model (or a saved trace) on accelerator models
and print per-layer speedup and energy efficiency over a dense baseline.

    crisp simulate --model resnet50 --pattern 2:4 --block 64 --sparsity 0.9 \\
        --arch crisp-stc,nvidia-stc,dstc,tc --csv out.csv --plot out.png
"""

from __future__ import annotations

import argparse
import warnings

from crisp.runtime.simulator.errors import ArchError, PatternFallbackWarning
from crisp.bench.model_workloads import DISTRIBUTIONS, fast_model_specs, model_specs
from crisp.models import MODEL_NAMES
from crisp.sparsity.pattern import resolve_pattern
from crisp.runtime.simulator.arch_io import get_arch
from crisp.runtime.simulator.presets import DEFAULT_COMPARISON, preset_names

from crisp.commands.common import add_model_args, add_pattern_args, model_and_input


def register(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a model on CRISP-STC, NVIDIA-STC, DSTC and a dense tensor core")
    add_model_args(p)
    add_pattern_args(p, block=64)
    p.add_argument("--arch", default=",".join(DEFAULT_COMPARISON),
                   help=f"comma-separated presets or .toml/.json files (presets: {', '.join(preset_names())})")
    p.add_argument("--baseline", default="tc", help="design the ratios are over (default tc)")
    p.add_argument("--trace", metavar="PATH", help="simulate this saved trace instead of compiling a model")
    p.add_argument("--save-trace", metavar="PATH", help="save the first architecture's trace here")
    p.add_argument("--distribution", default="global", choices=DISTRIBUTIONS,
                   help="global: CRISP's selection across layers (default); per-layer: each layer at the target")
    p.add_argument("--fast", action="store_true",
                   help="select masks directly (same masks as compile's magnitude saliency) instead of crisp.compile")
    p.add_argument("--smem-bw", type=float, help="override every architecture's SMEM read/write bandwidth (B/cycle)")
    p.add_argument("--activation-density", type=float, help="override DSTC's activation density")
    p.add_argument("--strict", action="store_true", help="fail when a layer's pattern cannot run natively")
    p.add_argument("--csv", metavar="PATH", help="write the per-layer comparison as CSV")
    p.add_argument("--plot", metavar="PATH", help="plot per-layer speedup and energy efficiency (PNG)")
    p.set_defaults(func=run)


def _archs(args: argparse.Namespace) -> list:
    names = [a.strip() for a in args.arch.split(",") if a.strip()]
    if not names:
        raise ArchError(f"--arch is empty; presets: {', '.join(preset_names())}")
    out = []
    for name in names:
        arch = get_arch(name)
        if args.smem_bw is not None:
            arch = arch.with_(smem_read_bw=args.smem_bw, smem_write_bw=args.smem_bw)
        if args.activation_density is not None and arch.dataflow == "outer-product":
            arch = arch.with_(activation_density=args.activation_density)
        out.append(arch)
    return out


def run(args: argparse.Namespace) -> int:
    from crisp.backends.stc_trace import Trace, trace_from_layers
    from crisp.simulate_api import compare_archs

    archs = _archs(args)
    baseline = get_arch(args.baseline)
    if args.smem_bw is not None:
        baseline = baseline.with_(smem_read_bw=args.smem_bw, smem_write_bw=args.smem_bw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatternFallbackWarning)  # the notes below say it
        if args.trace:
            source = Trace.load(args.trace)
            title = f"trace {args.trace}"
        else:
            via = "fast" if args.fast or args.distribution != "global" else "compile"
            if args.model in MODEL_NAMES and not args.weights and not args.input_shape:
                source = model_specs(args.model, pattern=args.pattern, block=args.block, sparsity=args.sparsity,
                                     distribution=args.distribution, batch=args.batch, seed=args.seed, via=via)
            else:  # a user's model (file, package, timm, torchvision) or in-project weights / shape
                model, x = model_and_input(args)
                source = fast_model_specs(model, x, resolve_pattern(args.pattern, args.block), args.sparsity,
                                          args.distribution)
            title = f"{args.model} {args.pattern} block {args.block} sparsity {args.sparsity:g} ({args.distribution})"
        if args.save_trace:
            trace = source if isinstance(source, Trace) else trace_from_layers(source, archs[0], strict=args.strict)
            size = trace.save(args.save_trace)
            print(f"trace ({len(trace)} instructions, {size} bytes) written to {args.save_trace}")
        comparison = compare_archs(source, archs, baseline=baseline, strict=args.strict)
    print(title)
    for arch in comparison.results.values():
        print("  " + arch.arch.summary())
    print(comparison.format_table())
    if args.csv:
        comparison.to_csv(args.csv)
        print(f"per-layer comparison written to {args.csv}")
    if args.plot:
        from crisp.runtime.simulator.plot import plot_comparison

        plot_comparison(comparison, args.plot, title)
        print(f"plot written to {args.plot}")
    return 0
