"""Baselines for ``accuracy_digits.py``, all run through crisp's pruning loop with the same
fine-tuning budget: dense fine-tuning, unstructured magnitude pruning, and filter (channel)
pruning at a given FLOPs ratio, plus the FLOPs count of a masked small CNN."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from crisp.ir.layer_outputs import layer_outputs
from crisp.pruning.class_data import ClassBatches
from crisp.pruning.loop import SteMasker, run_schedule

# the small CNN's chain: (producer weight, consumer weights, inputs per channel of the consumer)
FILTER_CHAIN = [
    ("conv1.weight", ["conv2.weight"], 1),
    ("conv2.weight", ["conv3.weight"], 1),
    ("conv3.weight", ["conv4.weight"], 1),
    ("conv4.weight", ["fc1.weight"], 4),  # AdaptiveAvgPool2d(2) + flatten: 4 inputs per channel
    ("fc1.weight", ["fc2.weight"], 1),
]


def out_positions(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Output positions per sample of every Conv2d/Linear weight (1 for Linear); leaves the model in eval mode."""
    _, shapes = layer_outputs(model.eval(), example[:1])
    return {f"{name}.weight": math.prod(shape[2:]) if len(shape) == 4 else 1 for name, shape in shapes.items()}


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {f"{n}.weight": tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def flops_ratio(shapes: dict[str, tuple[int, ...]], masks: dict[str, torch.Tensor], positions: dict[str, int]) -> float:
    """Kept multiply-accumulates / dense ones over every Conv2d/Linear (unmasked layers count dense)."""
    size = {n: int(torch.Size(s).numel()) for n, s in shapes.items()}
    dense = sum(size[n] * pos for n, pos in positions.items())
    kept = sum((int(masks[n].sum()) if n in masks else size[n]) * pos for n, pos in positions.items())
    return kept / dense


def _val(val_data, classes):
    return None if val_data is None else ClassBatches(val_data, classes, name="val_data")


def _fit(model, masker, train, val, schedule, *, warmup, epochs, saliency="magnitude", lr=0.01):
    return run_schedule(model, masker, train, val, schedule=schedule, saliency=saliency, warmup_epochs=warmup,
                        epochs_per_step=epochs, lr=lr, progress=False)


def dense_finetune(model, train_data, val_data, classes, *, steps, warmup, epochs, seed, lr=0.01):
    work = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        masker = SteMasker(work, [], lambda s, t: {})
        records = _fit(work, masker, ClassBatches(train_data, classes), _val(val_data, classes),
                       [0.0] * (steps + 1), warmup=warmup, epochs=epochs, lr=lr)
        masker.bake()
    return work.eval(), {}, records


def unstructured_select(saliency: dict[str, torch.Tensor], target: float) -> dict[str, torch.Tensor]:
    """Global: keep the largest ``1 - target`` share of all weights by saliency."""
    flat = torch.cat([s.flatten() for s in saliency.values()])
    keep = max(1, int(round((1 - target) * flat.numel())))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, keep, sorted=False).indices] = True
    out, at = {}, 0
    for name, s in saliency.items():
        out[name] = chosen[at: at + s.numel()].reshape(s.shape)
        at += s.numel()
    return out


def unstructured(model, train_data, val_data, classes, names, schedule, *, warmup, epochs, seed, lr=0.01):
    work = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        masker = SteMasker(work, names, unstructured_select)
        records = _fit(work, masker, ClassBatches(train_data, classes), _val(val_data, classes),
                       schedule, warmup=warmup, epochs=epochs, lr=lr)
        masks = masker.bake()
    return work.eval(), masks, records


def filter_masks(shapes: dict[str, tuple[int, ...]], ratio: float, norms: dict[str, torch.Tensor],
                 chain=FILTER_CHAIN) -> dict[str, torch.Tensor]:
    """Keep the ``ratio`` share of output channels (largest L1 norm) of every producer layer and
    drop the matching inputs of its consumers."""
    masks = {n: torch.ones(shapes[n], dtype=torch.bool) for n in chain_weights(chain)}
    for producer, consumers, per_channel in chain:
        score = norms[producer]
        channels = score.numel()
        keep = max(1, int(round(ratio * channels)))
        kept = torch.zeros(channels, dtype=torch.bool)
        kept[torch.topk(score, keep, sorted=False).indices] = True
        masks[producer] &= kept.view(-1, *([1] * (len(shapes[producer]) - 1)))
        cols = kept.repeat_interleave(per_channel)
        for consumer in consumers:
            masks[consumer] &= cols.view(1, -1, *([1] * (len(shapes[consumer]) - 2)))
    return masks


def chain_weights(chain) -> list[str]:
    names = []
    for producer, consumers, _ in chain:
        names += [n for n in [producer, *consumers] if n not in names]
    return names


def filter_select_for(shapes: dict[str, tuple[int, ...]], positions: dict[str, int], chain=FILTER_CHAIN):
    """A select function that, given a target FLOPs ratio (passed as 1 - target), picks the channel
    share by bisection."""

    def select(saliency: dict[str, torch.Tensor], target: float) -> dict[str, torch.Tensor]:
        want = 1.0 - target  # the loop passes "sparsity"; here it is 1 - FLOPs ratio
        norms = {p: saliency[p].flatten(1).sum(1) if saliency[p].dim() > 1 else saliency[p] for p, _, _ in chain}
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            if flops_ratio(shapes, filter_masks(shapes, mid, norms, chain), positions) > want:
                hi = mid
            else:
                lo = mid
        best = min((lo, hi), key=lambda r: abs(flops_ratio(shapes, filter_masks(shapes, r, norms, chain), positions) - want))
        return filter_masks(shapes, best, norms, chain)

    return select


def filter_pruning(model, train_data, val_data, classes, flops_target, *, steps, warmup, epochs, seed, example,
                   chain=FILTER_CHAIN, lr=0.01):
    work = copy.deepcopy(model)
    positions = out_positions(work, example)
    shapes = weight_shapes(work)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        masker = SteMasker(work, chain_weights(chain), filter_select_for(shapes, positions, chain))
        # FLOPs falls linearly from 1 to the target over the steps (passed to the loop as 1 - FLOPs)
        schedule = [(1 - flops_target) * (p + 1) / (steps + 1) for p in range(steps + 1)]
        records = _fit(work, masker, ClassBatches(train_data, classes), _val(val_data, classes),
                       schedule, warmup=warmup, epochs=epochs, lr=lr)
        masks = masker.bake()
    return work.eval(), masks, records
