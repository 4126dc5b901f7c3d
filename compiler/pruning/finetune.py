"""The fine-tuning and evaluation loops used between pruning steps.

``train_epoch`` runs one pass of cross-entropy training over ``(input, label)`` batches and
calls ``after_backward`` (e.g. a Taylor accumulator) after each backward pass. ``evaluate``
returns loss and accuracy; both sum their counts over ranks under ``torch.distributed``.
``recalibrate_batchnorm`` re-estimates BatchNorm running statistics for the current (masked) weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from crisp.progress import progress as progress_bar
from crisp.pruning.distributed import all_reduce_sums, rank, world_size


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None,
    *,
    after_backward: Callable[[], None] | None = None,
    progress: bool = False,
    desc: str = "fine-tune",
) -> float:
    """One epoch of training; returns the mean loss over samples (over all ranks)."""
    model.train()
    total = torch.zeros(2, dtype=torch.float64)
    for x, y in progress_bar(batches, enabled=progress and rank() == 0, desc=desc):
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if after_backward is not None:
            after_backward()
        if optimizer is not None:
            optimizer.step()
        total += torch.tensor([float(loss.detach()) * y.shape[0], float(y.shape[0])], dtype=torch.float64)
    (total,) = all_reduce_sums([total])
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float, int]:
    """(mean loss, accuracy, samples) of ``model`` in eval mode; restores its mode."""
    was_training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64)
    try:
        for x, y in batches:
            out = model(x)
            total += torch.tensor(
                [float(F.cross_entropy(out, y, reduction="sum")), float((out.argmax(1) == y).sum()), float(y.shape[0])],
                dtype=torch.float64,
            )
    finally:
        model.train(was_training)
    (total,) = all_reduce_sums([total])
    n = int(total[2])
    if n == 0:
        return float("nan"), float("nan"), 0
    return float(total[0] / n), float(total[1] / n), n


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (no weight changes).

    After a mask change the running statistics still describe the previous weights (with few batches
    per epoch, momentum 0.1 keeps a large share of them), so eval-mode outputs drift from train-mode
    ones. The statistics are reset and averaged over all ``batches`` (cumulative, ``momentum=None``),
    with every other module in eval mode (dropout off, learned masks at their argmax pattern); under
    ``torch.distributed`` they are averaged over ranks. Returns the number of BatchNorm layers recalibrated
    (0 when no batch had two samples: the statistics stay as they were); the model's modes are restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in norms]
    stats = [t for bn in norms for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    saved = [t.clone() for t in stats]
    used = 0
    model.eval()
    try:
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for x, _ in batches:
            if x.shape[0] > 1:  # one sample has no batch variance
                model(x)
                used += 1
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        for m, mode in modes.items():
            m.train(mode)
    if not used:  # nothing to estimate from: keep the statistics as they were
        for t, old in zip(stats, saved):
            t.copy_(old)
        return 0
    floats = [t for bn in norms for t in (bn.running_mean, bn.running_var)]
    size = world_size()
    for t, total in zip(floats, all_reduce_sums(floats)):
        t.copy_(total / size)
    return len(norms)
