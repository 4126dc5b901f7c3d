"""Arguments and helpers shared by several CLI commands (not a command itself)."""

from __future__ import annotations

import argparse

import torch

from crisp.models.spec import SPEC_HELP, load_model, parse_shape
from crisp.sparsity.selection import ALLOCATIONS, DEFAULT_ALLOCATION


def _int_type(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum or value > 2**62:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _int_type(1, "a positive integer")
non_negative_int = _int_type(0, "a non-negative integer")


def finite_float(text: str) -> float:
    """An argparse type: a finite number (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_pattern_args(parser: argparse.ArgumentParser, block: int = 32, sparsity: float = 0.9) -> None:
    parser.add_argument("--pattern", default="2:4", help="N:M pattern, e.g. 2:4 (default 2:4)")
    parser.add_argument("--block", type=positive_int, default=block, help=f"block size B of the B x B blocks (default {block})")
    parser.add_argument("--sparsity", type=finite_float, default=sparsity, help=f"global target sparsity (default {sparsity})")


def add_allocation_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allocation", choices=ALLOCATIONS, default=DEFAULT_ALLOCATION,
                        help=f"how the global target is shared among layers (default {DEFAULT_ALLOCATION}; "
                             "paper: CRISP Alg. 1 read literally)")


def add_model_args(parser: argparse.ArgumentParser, default: str = "resnet50") -> None:
    parser.add_argument("--model", default=default, metavar="SPEC", help=f"{SPEC_HELP} (default {default})")
    parser.add_argument("--weights", metavar="PATH", help="load this state_dict file into the model (torch.load weights_only=True)")
    parser.add_argument("--input-shape", metavar="N,C,H,W", type=parse_shape, default=None,
                        help="shape of the example input (default: --batch x the model's own, else 3,224,224)")
    parser.add_argument("--num-classes", type=positive_int, default=None, help="classifier outputs (default: the model's)")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size of the example input (default 1)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random weights and input (default 0)")


def model_and_input(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model ``--model``/``--weights`` name and a seeded random example input of ``--input-shape``."""
    model, shape = load_model(args.model, getattr(args, "weights", None), num_classes=args.num_classes, seed=args.seed)
    full = getattr(args, "input_shape", None) or (args.batch, *shape)
    gen = torch.Generator().manual_seed(args.seed)
    return model, torch.randn(*full, generator=gen)
