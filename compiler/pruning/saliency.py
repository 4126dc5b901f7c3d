"""Saliency of weights: class-aware first-order Taylor (CRISP Eq. 1) and magnitude.

Taylor: ``T_w = | mean over batches of (dL/dW * W) |`` on samples of the user classes only
(product per batch, mean over batches, then the absolute value). With a process group, the
per-batch sums and the batch count are all-reduced, so every rank gets the same saliency as
one process that saw all ranks' batches. Magnitude ``|W|`` is the data-free fallback.

Results are ``{parameter name: tensor in the weight's shape}`` (float32).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crisp.pruning.class_data import ClassBatches, DataError, num_outputs, validate_classes
from crisp.pruning.distributed import all_reduce_sums
from crisp.pruning.ste import latent_weight

SALIENCY_KINDS = ("taylor", "magnitude")


def layer_weight_names(model: nn.Module) -> list[str]:
    """Names of the weights of every Conv2d and Linear layer, in module order."""
    return [
        f"{n}.weight" if n else "weight"
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]


class TaylorAccumulator:
    """Accumulates ``dL/dW * W`` after each backward pass; :meth:`result` gives Eq. 1.

    ``weights`` maps a parameter name to the tensor whose ``.grad`` holds dL/dW (for a masked
    layer, the STE's latent weight: its gradient is the dense one).
    """

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.weights = weights
        self.reset()

    def reset(self) -> None:
        self.sums = {n: torch.zeros(w.shape, dtype=torch.float64) for n, w in self.weights.items()}
        self.batches = 0

    def add(self) -> None:
        """Record the current gradients (call after ``loss.backward()``)."""
        for name, w in self.weights.items():
            if w.grad is not None:
                self.sums[name] += w.grad.detach().to(torch.float64) * w.detach().to(torch.float64)
        self.batches += 1

    def result(self) -> dict[str, torch.Tensor]:
        names = list(self.sums)
        reduced = all_reduce_sums([self.sums[n] for n in names] + [torch.tensor([float(self.batches)], dtype=torch.float64)])
        count = float(reduced[-1].item())
        if count == 0:
            raise DataError("no batch of user-class samples reached the Taylor saliency; check the data and classes")
        return {n: (s / count).abs().to(torch.float32) for n, s in zip(names, reduced[:-1])}


def magnitude_saliency(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """``|W|`` for each named weight (latent weights of masked layers)."""
    names = layer_weight_names(model) if names is None else list(names)
    return {n: latent_weight(model, n).detach().abs().to(torch.float32).clone() for n in names}


def taylor_saliency(
    model: nn.Module,
    data: Iterable,
    classes: Sequence[int],
    *,
    seed: int = 0,
    epochs: int = 1,
    lr: float = 0.0,
    names: Sequence[str] | None = None,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Class-aware Taylor saliency (Eq. 1) of ``model``'s Conv2d/Linear weights.

    ``data`` yields ``(input, label)`` batches; only samples whose label is in ``classes``
    are used, with the model's own output ids. With ``lr == 0`` (default) the model is
    evaluated in eval mode and its weights are not changed: the gradients are taken at the
    given weights. With ``lr > 0`` a copy is fine-tuned with SGD (momentum 0.9) on the user
    classes while the saliency accumulates, as in the paper's class-aware fine-tune. The
    input model is never modified. Under ``torch.distributed`` every rank passes its own
    shard and all ranks return the same, all-reduced saliency.
    """
    batches = ClassBatches(data, validate_classes(classes), name="calibration data")
    work = copy.deepcopy(model)
    classes = validate_classes(classes, num_outputs(work, batches.first_inputs()))
    batches = ClassBatches(batches.data, classes, name="calibration data")
    names = layer_weight_names(work) if names is None else list(names)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise DataError(f"epochs must be an integer >= 1, got {epochs!r}")
    for p in work.parameters():
        p.requires_grad_(True)
    acc = TaylorAccumulator({n: latent_weight(work, n) for n in names})
    opt = torch.optim.SGD(work.parameters(), lr=lr, momentum=0.9) if lr > 0 else None
    work.train(lr > 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            for i, (x, y) in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                work.zero_grad(set_to_none=True)
                F.cross_entropy(work(x), y).backward()
                acc.add()
                if opt is not None:
                    opt.step()
    return acc.result()
