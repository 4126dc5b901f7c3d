"""``crisp optimize in.onnx -o out.onnx``: prune an ONNX model to hybrid N:M + block sparsity and
write a compact (or dense) ONNX model that stock onnxruntime runs."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from crisp.commands.common import add_allocation_arg, add_pattern_args
from crisp.errors import ModelError
from crisp.onnx.io import save_model
from crisp.onnx.paths import check_distinct_paths
from crisp.onnx.optimize import optimize_onnx_with_report


def register(sub) -> None:
    p = sub.add_parser("optimize", help="prune an ONNX model (ONNX in, hybrid-sparse ONNX out)",
                       description="Prune every Conv/Gemm/MatMul with a constant weight to hybrid N:M + block sparsity; "
                                   "everything else passes through untouched.")
    p.add_argument("input", help="the ONNX model to optimize")
    p.add_argument("-o", "--output", required=True, help="where to write the optimized model")
    add_pattern_args(p)
    add_allocation_arg(p)
    p.add_argument("--format", choices=("compact", "dense"), default="compact",
                   help="compact: crisp nodes defined by ONNX functions (default); dense: zeros in place")
    p.add_argument("--body", choices=("auto", "measure", "blocks", "dense"), default="auto",
                   help="compact format: how each layer computes; auto: kept blocks or the dense op by a cost model "
                        "(default); measure: the faster of both, timed per layer in onnxruntime; blocks; dense")
    p.add_argument("--saliency", choices=("magnitude", "taylor"), default="magnitude",
                   help="magnitude (data-free, default) or taylor (class-aware, needs --calibration)")
    p.add_argument("--calibration", metavar="FILE", help=".npy of inputs, or .npz with 'inputs' (and optional 'labels')")
    p.add_argument("--classes", metavar="IDS", help="comma-separated user classes for --saliency taylor, e.g. 3,5,7")
    p.add_argument("--exclude", action="append", default=[], metavar="NAME",
                   help="keep this node (or weight; glob patterns allowed) dense (repeatable)")
    p.add_argument("--report", metavar="PATH", help="also write the per-layer report as JSON to PATH")
    p.add_argument("--external-data", action="store_true", help="write the tensors to <output>.data beside the model")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run)


def _calibration(path: str | None):
    if path is None:
        return None
    if not os.path.isfile(path):
        raise ModelError(f"calibration file {path!r} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read calibration file {path!r} as .npy/.npz: {exc}") from None
    if isinstance(data, np.ndarray):
        return data
    if "inputs" not in data:
        raise ModelError(f"calibration file {path!r} has no array named 'inputs' (found: {', '.join(data.files)})")
    return (data["inputs"], data["labels"]) if "labels" in data else data["inputs"]


def _classes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ModelError(f"--classes must be comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    check_distinct_paths(args.input, args.output, args.report, external_data=args.external_data)
    result = optimize_onnx_with_report(
        args.input, pattern=args.pattern, block=args.block, sparsity=args.sparsity, saliency=args.saliency,
        calibration=_calibration(args.calibration), classes=_classes(args.classes), format=args.format,
        exclude=tuple(args.exclude), progress=None if not args.quiet else False, allocation=args.allocation,
        body=args.body,
    )
    save_model(result.model, args.output, external_data=True if args.external_data else None)
    if args.report:
        result.report.to_json(args.report)
    if not args.quiet:
        print(result.report.format_table())
        size = os.path.getsize(args.output)
        print(f"wrote {args.output} ({size / 1e6:.2f} MB)" + (f" and {args.report}" if args.report else ""), file=sys.stderr)
    return 0
