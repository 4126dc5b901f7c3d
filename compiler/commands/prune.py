"""``crisp prune``: CRISP on the built-in digits task (scikit-learn digits, small CNN), or on the
user's model and data (``--model SPEC --data DIR|FILE.npz --classes NAME... -o model.crisp``, see
:mod:`crisp.commands.prune_user`).

Pretrains the small CNN on all 10 digits (or loads ``--checkpoint``), personalizes and prunes it
for ``--classes``, prints one line per step and the test accuracy on the user classes.
"""

from __future__ import annotations

import argparse
import json
import pickle

import torch

from crisp.commands.common import add_allocation_arg, add_pattern_args
from crisp.commands import prune_user
from crisp.fileio import atomic_write_text, check_writable
from crisp.sparsity.selection import density_line


def register(sub) -> None:
    p = sub.add_parser("prune", help="personalize and prune a model for a few classes (your --model and --data, "
                                     "or the built-in digits task)")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="user classes: folder names of --data DIR, label ids of --data FILE.npz, or digits 0-9")
    prune_user.add_user_data_args(p)
    add_pattern_args(p)
    add_allocation_arg(p)
    p.add_argument("--steps", type=int, default=0, help="block-pruning steps after the N:M step (default 0: one step "
                   "straight to the target; 3 is the paper's iterative schedule)")
    p.add_argument("--epochs-per-step", type=int, default=None, help="fine-tune epochs after each step (default: 8 "
                   "epochs shared among the steps)")
    p.add_argument("--warmup-epochs", type=int, default=1, help="class-aware fine-tune epochs before the first step (default 1)")
    p.add_argument("--saliency", choices=("taylor", "magnitude"), default="taylor")
    p.add_argument("--method", choices=("crisp", "learned"), default="crisp")
    p.add_argument("--shrink-head", action="store_true", help="keep only the user classes' classifier rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-epochs", type=int, default=8, help="epochs of pretraining on all digits (default 8)")
    p.add_argument("--checkpoint", metavar="PATH", help="load a pretrained small-CNN state_dict instead of pretraining")
    p.add_argument("-o", "--output", metavar="PATH", help="with --data: the compiled model (.crisp); digits: {'state_dict', "
                   "'masks', 'history'} of the pruned model")
    p.add_argument("--json", metavar="PATH", help="write the history as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-step lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_writable(args.json, "--json", parents=True)  # before the work, not after the whole run
    torch.set_flush_denormal(True)  # denormal floats slow CPU training; flushing them does not change results
    try:
        return _run(args)
    finally:
        torch.set_flush_denormal(False)


def _run(args: argparse.Namespace) -> int:
    from crisp.pruning.class_data import DataError
    from crisp.tasks.digits_data import load_digits_split, loader
    from crisp.tasks.digits import class_accuracy, pretrain_small_cnn, save_atomic
    from crisp.errors import ModelError
    from crisp.models import small_cnn
    from crisp.pruning.prune import prune

    if not args.classes:
        raise DataError("crisp prune needs --classes: the user's classes (folder names with --data DIR, "
                        "label ids with --data FILE.npz, digits 0-9 on the built-in task)")
    if args.data or args.model:
        if not args.data:
            raise DataError("--model needs --data DIR|FILE.npz (your samples of --classes)")
        return prune_user.run(args)
    try:
        args.classes = [int(c) for c in args.classes]
    except ValueError as exc:
        raise DataError(f"--classes {args.classes}: the digits task takes digit ids 0-9 (class names need --data)") from exc
    split = load_digits_split()
    if args.checkpoint:
        model = small_cnn(num_classes=10, in_channels=1, input_size=8)
        try:
            model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"cannot load --checkpoint {args.checkpoint}: {type(exc).__name__}: {exc}. Pass a small-CNN "
                             "state_dict saved with torch.save(model.state_dict(), path)") from exc
        model.eval()
    else:
        model = pretrain_small_cnn(split, epochs=args.pretrain_epochs, seed=args.seed)
    bad = [c for c in args.classes if not 0 <= c <= 9]
    if bad:
        raise DataError(f"--classes {bad} are not digits; use ids 0-9")
    dense_acc = class_accuracy(model, split.test, args.classes)
    print(f"pretrained small CNN: test accuracy on classes {args.classes}: {100 * dense_acc:.2f}%")
    pruned, history = prune(
        model, loader(split.train, batch_size=32, shuffle=True, seed=args.seed),
        classes=args.classes, pattern=args.pattern, block=args.block, sparsity=args.sparsity,
        steps=args.steps, epochs_per_step=args.epochs_per_step, warmup_epochs=args.warmup_epochs,
        saliency=args.saliency, method=args.method, val_data=loader(split.val, batch_size=256),
        seed=args.seed, shrink_head=args.shrink_head, progress=not args.quiet, allocation=args.allocation,
    )
    acc = class_accuracy(pruned, split.test, args.classes, class_ids=history.class_ids)
    print(
        f"pruned ({args.method}, {args.saliency}, {history.pattern} in {args.block}x{args.block} blocks): "
        f"sparsity {history.achieved_sparsity:.4f} (target {history.target_sparsity:.4f}), "
        f"test accuracy on classes {args.classes}: {100 * acc:.2f}% (dense {100 * dense_acc:.2f}%)"
    )
    print(density_line(history.density_distribution()))
    for name, layer in history.layers.items():
        print(f"  {name}: density {layer['density']:.4f}, {layer['kept_blocks_per_row']}/{layer['blocks_per_row']} blocks per row")
    for name, why in history.dense_layers.items():
        print(f"  {name}: dense ({why})")
    if args.output:
        save_atomic({"state_dict": pruned.state_dict(), "masks": history.masks, "history": history.to_dict()}, args.output)
        print(f"pruned model written to {args.output}")
    if args.json:
        record = history.to_dict() | {"test_accuracy": acc, "dense_test_accuracy": dense_acc}
        atomic_write_text(args.json, json.dumps(record, indent=2), parents=True)
        print(f"history written to {args.json}")
    return 0
