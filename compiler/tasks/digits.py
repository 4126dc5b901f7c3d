"""The built-in digits task: the in-project small CNN pretrained on all 10 digit classes,
evaluated on a user's classes. Used by ``crisp prune`` and ``benchmarks/accuracy_digits.py``.
"""

from __future__ import annotations

import io

import torch
from torch import nn

from crisp.tasks.digits_data import DigitsSplit, load_digits_split, loader, subset
from crisp.fileio import atomic_write_bytes
from crisp.pruning.finetune import evaluate, train_epoch
from crisp.models import small_cnn


def pretrain_small_cnn(split: DigitsSplit | None = None, *, epochs: int = 8, seed: int = 0, lr: float = 1e-3) -> nn.Module:
    """``small_cnn(num_classes=10, in_channels=1, input_size=8)`` trained with Adam on the train split."""
    split = split or load_digits_split()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = small_cnn(num_classes=10, in_channels=1, input_size=8)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for e in range(epochs):
            train_epoch(model, loader(split.train, batch_size=32, shuffle=True, seed=seed * 1000 + e), opt)
    return model.eval()


def class_accuracy(model: nn.Module, dataset, classes, *, class_ids: tuple[int, ...] | None = None) -> float:
    """Accuracy on the samples of ``classes``; ``class_ids`` maps a shrunk head's outputs to ids."""
    data = subset(dataset, classes)
    x, y = data.tensors
    if class_ids is not None:
        y = (y[:, None] == torch.tensor(class_ids)[None, :]).long().argmax(1)
    _, acc, _ = evaluate(model, [(x, y)])
    return acc


def save_atomic(obj: object, path: str) -> None:
    """``torch.save`` to ``path`` atomically (never a half-written file)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), parents=True)
