"""The user-data path of ``crisp prune``: the user's model (``--model``/``--weights``) and samples
(``--data``), a held-out split, CRISP pruning with per-step lines, held-out accuracy dense vs
pruned, and the compiled model written to ``-o`` (not a command itself)."""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

import crisp
from crisp.errors import ModelError
from crisp.models.spec import load_model
from crisp.pruning.class_data import DataError
from crisp.tasks.image_data import holdout_split, load_user_data, user_class_accuracy


def add_user_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="SPEC", help="your model (as in crisp compile --model); with --data")
    p.add_argument("--weights", metavar="PATH", help="state_dict file for --model (torch.load weights_only=True)")
    p.add_argument("--data", metavar="DIR|FILE.npz", help="DIR/<class>/*.png|jpg|jpeg|bmp, or .npz with inputs and labels")
    p.add_argument("--input-size", metavar="H,W", help="resize images to H,W (required for an image folder)")
    p.add_argument("--mean", type=float, nargs="+", help="per-channel mean to subtract after scaling pixels to [0, 1]")
    p.add_argument("--std", type=float, nargs="+", help="per-channel std to divide by")
    p.add_argument("--holdout", type=float, default=0.25, help="share of each class held out for accuracy (default 0.25)")
    p.add_argument("--batch-size", type=int, default=16, help="fine-tuning batch size (default 16)")


def _size(text: str | None, data_is_dir: bool) -> tuple[int, int]:
    if text is None:
        if data_is_dir:
            raise DataError("--input-size H,W is required for an image folder (the size the model expects)")
        return (0, 0)
    try:
        h, w = (int(v) for v in text.replace("x", ",").split(","))
        assert h > 0 and w > 0
    except (ValueError, AssertionError) as exc:
        raise DataError(f"--input-size {text!r}: write two positive integers such as 224,224") from exc
    return h, w


def _in_channels(model: torch.nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    return 3


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if not args.model:
        raise ModelError("--data needs --model SPEC (your model; see crisp compile --help)")
    if not args.output:
        raise DataError("--data needs -o PATH: where to write the compiled, pruned model (.crisp)")
    model, _ = load_model(args.model, args.weights, seed=args.seed)
    size = _size(args.input_size, Path(args.data).is_dir())
    data = load_user_data(args.data, args.classes, size, _in_channels(model), args.mean, args.std)
    (xt, yt), (xh, yh) = holdout_split(data, args.holdout, args.seed)
    print(f"data: {len(yt)} training and {len(yh)} held-out samples of classes {', '.join(data.class_names)} "
          f"(model outputs {data.class_ids}), input {tuple(data.x.shape[1:])}")
    dense_acc = user_class_accuracy(model.eval(), xh, yh, data.class_ids)
    train = DataLoader(TensorDataset(xt, yt), batch_size=args.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(args.seed))
    held = DataLoader(TensorDataset(xh, yh), batch_size=256)
    pruned, history = crisp.prune(
        model, train, classes=data.class_ids, pattern=args.pattern, block=args.block, sparsity=args.sparsity,
        steps=args.steps, epochs_per_step=args.epochs_per_step, warmup_epochs=args.warmup_epochs,
        saliency=args.saliency, method=args.method, val_data=held, seed=args.seed, progress=False,
        callbacks=None if args.quiet else (lambda rec: print(rec.line(args.steps + 1), flush=True)),
    )
    pruned_acc = user_class_accuracy(pruned.eval(), xh, yh, data.class_ids)
    masks = history.masks
    keep = lambda module: {n: masks[n].float() * (1 + p.detach().abs()) for n, p in module.named_parameters() if n in masks}
    compiled = crisp.compile(pruned, (xh[:1],), pattern=args.pattern, block=args.block,
                             sparsity=history.achieved_sparsity, saliency=keep, seed=args.seed)
    compiled_acc = user_class_accuracy(compiled, xh, yh, data.class_ids)
    print(f"held-out accuracy on {', '.join(data.class_names)}: dense {100 * dense_acc:.2f}%, pruned "
          f"{100 * pruned_acc:.2f}%, compiled {100 * compiled_acc:.2f}% (sparsity {history.achieved_sparsity:.4f}, "
          f"target {history.target_sparsity:.4f})")
    path = compiled.save(args.output)
    print(f"compiled model written to {path}; load it with crisp.load or inspect it with crisp info")
    return 0
