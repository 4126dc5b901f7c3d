"""The iterative pruning loop shared by CRISP, learned masks and the benchmark's baselines.

A *masker* owns how masks reach the model and what is trained:

- :class:`SteMasker`: masks applied through the straight-through estimator; all weights train.
  Its ``select`` function turns saliency into masks (CRISP: the global hybrid selection).
- :class:`LearnedMasker`: learned N:M masks with frozen weights; block selection (CRISP's,
  on the learned N:M choice) sets which blocks stay; the pattern logits train (with
  ``train_affine``, also the BatchNorm affine parameters and the biases).

:func:`run_schedule` does Alg. 1's loop: optional class-aware warm-up fine-tune (which also
accumulates Taylor saliency), then for each scheduled sparsity select masks from the saliency
accumulated so far, fine-tune ``epochs_per_step`` epochs (accumulating the next saliency),
re-estimate the BatchNorm running statistics of the masked model on the training batches,
evaluate, record a :class:`StepRecord` and call the callbacks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from crisp.pruning.distributed import broadcast_buffers, rank, wrap_for_training
from crisp.pruning.finetune import evaluate, recalibrate_batchnorm, train_epoch
from crisp.sparsity.gemm_view import as_blocks, gemm_to_weight, pad_to_blocks, weight_to_gemm
from crisp.pruning.learned_masks import LearnedMasking, block_keep_mask, restrict_to_choice
from crisp.sparsity.pattern import Pattern
from crisp.pruning.saliency import TaylorAccumulator, magnitude_saliency
from crisp.sparsity.selection import DEFAULT_ALLOCATION, SelectionResult, density_distribution, select_hybrid_masks
from crisp.pruning.ste import bake_masks, latent_weight, set_ste_masks
from crisp.progress import note

log = logging.getLogger(__name__)
SelectFn = Callable[[dict[str, torch.Tensor], float], dict[str, torch.Tensor]]


@dataclass
class StepRecord:
    """What one pruning step did."""

    step: int
    target_sparsity: float
    achieved_sparsity: float
    loss: float  # mean training loss of the step's fine-tune (eval loss when it trains 0 epochs)
    accuracy: float  # accuracy on the user classes after the step's fine-tune
    accuracy_on: str  # "val" or "train"
    mask_change: float  # share of prunable weights whose mask differs from the previous step (step 0: from dense)
    epochs: int
    seconds: float

    def line(self, total_steps: int) -> str:
        return (
            f"step {self.step + 1}/{total_steps}: sparsity {self.achieved_sparsity:.3f} "
            f"(target {self.target_sparsity:.3f}), loss {self.loss:.4f}, "
            f"{self.accuracy_on} acc {100 * self.accuracy:.2f}%, masks changed {100 * self.mask_change:.2f}%, "
            f"{self.epochs} epoch(s), {self.seconds:.1f}s"
        )


@dataclass
class PruneHistory:
    """Per-step records plus the final masks of a :func:`crisp.prune` run."""

    steps: list[StepRecord]
    masks: dict[str, torch.Tensor]  # bool, weight shape, keyed by parameter name
    classes: tuple[int, ...]
    method: str
    saliency: str
    pattern: str
    target_sparsity: float
    schedule: list[float]
    class_ids: tuple[int, ...] | None = None  # original id of each output when the head was shrunk
    layers: dict[str, dict] = field(default_factory=dict)
    dense_layers: dict[str, str] = field(default_factory=dict)  # layer -> why it stays dense
    allocation: str = DEFAULT_ALLOCATION

    @property
    def achieved_sparsity(self) -> float:
        return mask_sparsity(self.masks)

    def density_distribution(self) -> dict:
        """Min / median / max density of the masked layers and the layers kept at 1 block per row."""
        return density_distribution({n: (v["density"], v["kept_blocks_per_row"]) for n, v in self.layers.items()})

    @property
    def final(self) -> StepRecord:
        return self.steps[-1]

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "saliency": self.saliency,
            "allocation": self.allocation,
            "pattern": self.pattern,
            "classes": list(self.classes),
            "class_ids": None if self.class_ids is None else list(self.class_ids),
            "target_sparsity": self.target_sparsity,
            "achieved_sparsity": self.achieved_sparsity,
            "schedule": list(self.schedule),
            "steps": [asdict(s) for s in self.steps],
            "layers": self.layers,
            "density_distribution": self.density_distribution(),
            "dense_layers": self.dense_layers,
        }


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def layer_summary(masks: dict[str, torch.Tensor], block: int) -> dict[str, dict]:
    """Kept weights and kept blocks per block-row of each masked layer."""
    out = {}
    for name, mask in masks.items():
        g = weight_to_gemm(mask)
        blocks = as_blocks(pad_to_blocks(g, block, False), block).any(dim=(2, 3))  # [nbr, nbc]
        per_row = blocks.sum(1)
        out[name] = {
            "kept": int(mask.sum()),
            "total": mask.numel(),
            "density": float(mask.sum()) / max(1, mask.numel()),
            "kept_blocks_per_row": int(per_row.max()),
            "min_kept_blocks_per_row": int(per_row.min()),
            "blocks_per_row": int(blocks.shape[1]),
        }
    return out


def hybrid_select(saliency: dict[str, torch.Tensor], pattern: Pattern, target: float,
                  allocation: str = DEFAULT_ALLOCATION) -> tuple[dict[str, torch.Tensor], SelectionResult]:
    """CRISP's global hybrid selection on weight-shaped saliency; masks in weight shape."""
    result = select_hybrid_masks({n: weight_to_gemm(s) for n, s in saliency.items()}, pattern, target, allocation)
    masks = {n: gemm_to_weight(result.layers[n].mask, saliency[n].shape).bool() for n in saliency}
    return masks, result


class SteMasker:
    """Masks through the STE; every parameter of the model trains."""

    def __init__(self, model: nn.Module, names: Sequence[str], select: SelectFn):
        self.model = model
        self.names = list(names)
        self._select = select
        self._masks = {n: torch.ones_like(latent_weight(model, n), dtype=torch.bool) for n in self.names}
        set_ste_masks(model, self._masks)  # parametrize now, before any DDP wrapper sees the parameters

    def latent(self) -> dict[str, torch.Tensor]:
        return {n: latent_weight(self.model, n) for n in self.names}

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.trainable(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    def select(self, saliency: dict[str, torch.Tensor], target: float) -> dict[str, torch.Tensor]:
        masks = self._select({n: saliency[n] for n in self.names}, target)
        set_ste_masks(self.model, masks)
        self._masks = {n: m.clone() for n, m in masks.items()}
        return self.masks()

    def masks(self) -> dict[str, torch.Tensor]:
        return {n: m.clone() for n, m in self._masks.items()}

    def bake(self) -> dict[str, torch.Tensor]:
        bake_masks(self.model, self.names)
        return self.masks()


class LearnedMasker:
    """Learned N:M masks (frozen weights) inside CRISP-selected blocks; the logits train.

    ``train_affine=True`` also trains the BatchNorm affine parameters and every bias (the conv and
    linear weights stay frozen): a block cut removes most of a layer's inputs, and frozen weights
    with their old per-channel scales and shifts cannot make up for it (with 2 user classes a
    stale class prior alone puts the model at chance)."""

    def __init__(self, model: nn.Module, names: Sequence[str], pattern: Pattern,
                 init_saliency: dict[str, torch.Tensor] | None, init_scale: float = 10.0,
                 allocation: str = DEFAULT_ALLOCATION, train_affine: bool = False):
        self.model = model
        self.names = list(names)
        self.pattern = pattern
        self.allocation = allocation
        for p in model.parameters():
            p.requires_grad_(False)
        self.affine = affine_parameters(model) if train_affine else []
        for p in self.affine:
            p.requires_grad_(True)
        self.learned = LearnedMasking(model, self.names, pattern, init_saliency, init_scale)

    def latent(self) -> dict[str, torch.Tensor]:
        return {n: latent_weight(self.model, n) for n in self.names}

    def trainable(self) -> list[nn.Parameter]:
        return self.learned.parameters() + self.affine

    def make_optimizer(self, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trainable(), lr=lr, betas=(momentum, 0.999))

    def select(self, saliency: dict[str, torch.Tensor], target: float) -> dict[str, torch.Tensor]:
        choice = self.learned.nm_masks()
        restricted = {n: restrict_to_choice(saliency[n], choice[n]) for n in self.names}
        masks, _ = hybrid_select(restricted, self.pattern, target, self.allocation)
        blocks = {
            n: gemm_to_weight(block_keep_mask(weight_to_gemm(m), self.pattern.block), m.shape).bool()
            for n, m in masks.items()
        }
        self.learned.set_block_masks(blocks)
        return self.masks()

    def masks(self) -> dict[str, torch.Tensor]:
        return self.learned.hard_masks()

    def bake(self) -> dict[str, torch.Tensor]:
        masks = self.learned.bake()
        for p in self.model.parameters():
            p.requires_grad_(True)
        return masks


def affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The BatchNorm affine parameters and the biases of every module (no conv/linear weight)."""
    out: list[nn.Parameter] = []
    for module in model.modules():
        norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        for name, p in module.named_parameters(recurse=False):
            if (norm or name == "bias") and all(p is not q for q in out):
                out.append(p)
    return out


def gradient_pass(model: nn.Module, batches: Iterable, after_backward: Callable[[], None]) -> None:
    """Gradients at the current weights (eval mode, no update), for Taylor saliency."""
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            after_backward()
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)


def run_schedule(
    model: nn.Module,
    masker: SteMasker | LearnedMasker,
    train_batches: Iterable,
    val_batches: Iterable | None,
    *,
    schedule: Sequence[float],
    saliency: str = "taylor",
    warmup_epochs: int = 1,
    epochs_per_step: int = 2,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    initial_saliency: dict[str, torch.Tensor] | None = None,
    callbacks: Sequence[Callable[[StepRecord], object]] = (),
    progress: bool = False,
) -> list[StepRecord]:
    """Alg. 1's loop on ``model`` (changed in place through ``masker``); returns the step records."""
    train_model = wrap_for_training(model)
    optimizer = masker.make_optimizer(lr, momentum, weight_decay)
    acc = TaylorAccumulator(masker.latent())
    show = progress and rank() == 0

    def epoch(desc: str, index: int, count: int) -> float:
        # cosine decay inside each fine-tune phase (warm-up, then every step): each pruning step
        # starts again from the full learning rate to recover from its cut
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * index / max(1, count)))
        hook = acc.add if saliency == "taylor" else None
        loss = train_epoch(train_model, train_batches, optimizer, after_backward=hook, progress=show, desc=desc)
        broadcast_buffers(model)
        return loss

    for e in range(warmup_epochs):
        epoch(f"warm-up {e + 1}/{warmup_epochs}", e, warmup_epochs)
    pending = dict(initial_saliency) if initial_saliency is not None else None
    if saliency == "taylor" and pending is None and acc.batches == 0:
        gradient_pass(train_model, train_batches, acc.add)

    records: list[StepRecord] = []
    previous = masker.masks()
    for p, target in enumerate(schedule):
        start = time.perf_counter()
        if saliency == "taylor":
            sal = pending if pending is not None else acc.result()
        else:
            sal = magnitude_saliency(model, masker.names)
        pending = None
        masks = masker.select(sal, float(target))
        changed = sum(int((masks[n] != previous[n]).sum()) for n in masks)
        change = changed / max(1, sum(m.numel() for m in masks.values()))
        previous = {n: m.clone() for n, m in masks.items()}
        acc.reset()
        losses = [epoch(f"step {p + 1}/{len(schedule)} epoch {e + 1}/{epochs_per_step}", e, epochs_per_step)
                  for e in range(epochs_per_step)]
        recalibrate_batchnorm(model, train_batches)  # running statistics of the masked weights
        if saliency == "taylor" and acc.batches == 0 and p + 1 < len(schedule):
            gradient_pass(train_model, train_batches, acc.add)
        eval_batches, split = (val_batches, "val") if val_batches is not None else (train_batches, "train")
        _, accuracy, _ = evaluate(model, eval_batches)
        loss = losses[-1] if losses else evaluate(model, train_batches)[0]
        record = StepRecord(
            step=p,
            target_sparsity=float(target),
            achieved_sparsity=mask_sparsity(masker.masks()),
            loss=float(loss),
            accuracy=float(accuracy),
            accuracy_on=split,
            mask_change=change,
            epochs=epochs_per_step,
            seconds=time.perf_counter() - start,
        )
        records.append(record)
        note(log, show, record.line(len(schedule)))
        for cb in callbacks:
            cb(record)
    return records

