"""``crisp compile``: compile a model (in-project, timm/torchvision, or the user's file) and print the
per-layer report; ``-o`` saves the compiled model, ``--plot`` draws the report."""

from __future__ import annotations

import argparse

import crisp

from crisp.fileio import check_writable
from crisp.report_plot import plot_report
from crisp.commands.common import add_allocation_arg, add_model_args, add_pattern_args, model_and_input


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile a model, print the per-layer report, optionally save it (-o model.crisp)")
    add_model_args(p)
    add_pattern_args(p)
    add_allocation_arg(p)
    p.add_argument("--target", default="cpu", help="backend: cpu (fast kernels, the default), reference, onnx, crisp-stc")
    p.add_argument("--exclude", action="append", default=[], metavar="MODULE", help="keep this module dense (repeatable)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    p.add_argument("-o", "--output", metavar="PATH", help="save the compiled model to PATH (.crisp; crisp.load / crisp info read it)")
    p.add_argument("--plot", metavar="PATH", help="draw per layer the kept density, kept blocks per row and MACs (needs matplotlib)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for option, path in (("--json", args.json), ("-o", args.output), ("--plot", args.plot)):
        if path:
            check_writable(path, option)  # before the work, not after the whole compile
    model, x = model_and_input(args)
    compiled = crisp.compile(
        model, (x,), target=args.target, pattern=args.pattern, block=args.block, sparsity=args.sparsity,
        exclude=args.exclude, seed=args.seed, progress=True, allocation=args.allocation,
    )
    print(compiled.report)
    if args.json:
        compiled.report.save_json(args.json)
        print(f"report written to {args.json}")
    if args.output:
        path = compiled.save(args.output)
        print(f"compiled model written to {path} ({path.stat().st_size / 2**20:.2f} MiB); load it with crisp.load")
    if args.plot:
        plot_report(compiled.report, args.plot, title=f"{args.model}: {compiled.report.pattern}")
        print(f"plot written to {args.plot}")
    return 0
