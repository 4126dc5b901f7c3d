"""Arguments and helpers shared by several CLI commands (not a command itself)."""

from __future__ import annotations

import argparse

import torch

from crisp.models import MODEL_NAMES, build
from crisp.models.registry import input_shape


def add_pattern_args(parser: argparse.ArgumentParser, block: int = 32, sparsity: float = 0.9) -> None:
    parser.add_argument("--pattern", default="2:4", help="N:M pattern, e.g. 2:4 (default 2:4)")
    parser.add_argument("--block", type=int, default=block, help=f"block size B of the B x B blocks (default {block})")
    parser.add_argument("--sparsity", type=float, default=sparsity, help=f"global target sparsity (default {sparsity})")


def add_model_args(parser: argparse.ArgumentParser, default: str = "resnet50") -> None:
    parser.add_argument("--model", default=default, choices=MODEL_NAMES, help=f"in-project model (default {default})")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the example input (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and input (default 0)")


def model_and_input(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    model = build(args.model, num_classes=args.num_classes, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, *input_shape(args.model), generator=gen)
    return model, x
