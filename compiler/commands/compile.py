"""``crisp compile``: compile an in-project model and print (or save) the per-layer report."""

from __future__ import annotations

import argparse

import crisp

from crisp.commands.common import add_model_args, add_pattern_args, model_and_input


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile an in-project model and print the per-layer report")
    add_model_args(p)
    add_pattern_args(p)
    p.add_argument("--target", default="cpu", help="backend: cpu (fast kernels, the default), reference, onnx, crisp-stc")
    p.add_argument("--exclude", action="append", default=[], metavar="MODULE", help="keep this module dense (repeatable)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, x = model_and_input(args)
    compiled = crisp.compile(
        model, (x,), target=args.target, pattern=args.pattern, block=args.block, sparsity=args.sparsity,
        exclude=args.exclude, seed=args.seed, progress=True,
    )
    print(compiled.report)
    if args.json:
        compiled.report.save_json(args.json)
        print(f"report written to {args.json}")
    return 0
