"""``crisp info model.crisp``: print what a saved compiled model holds (target, versions, report)."""

from __future__ import annotations

import argparse

import crisp


def register(sub) -> None:
    p = sub.add_parser("info", help="print the report of a saved compiled model (.crisp)")
    p.add_argument("path", help="a file written by compiled.save or crisp compile -o")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    compiled = crisp.load(args.path)
    meta = compiled.file_info
    print(f"{args.path}: crisp compiled model, format version {meta['format_version']}, written by crisp "
          f"{meta.get('crisp_version')} with torch {meta.get('torch_version')}")
    shapes = ", ".join(f"{'x'.join(map(str, s))} {d}" for s, d in meta.get("inputs", []))
    print(f"target {compiled.target}; example input {shapes}")
    print(compiled.report)
    return 0
