"""The ``crisp`` command line: discovers the subcommands in :mod:`crisp.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from crisp import commands
from crisp.errors import CrispError
from crisp.progress import log_to_stderr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crisp",
        description="Compile CNNs to hybrid N:M + block sparsity (CRISP) and run them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with log_to_stderr():  # progress and notes of the library appear on stderr, one line each
            return int(args.func(args) or 0)
    except CrispError as exc:
        print(f"crisp: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
