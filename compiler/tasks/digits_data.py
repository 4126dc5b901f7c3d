"""scikit-learn's ``load_digits`` (8x8 grey images, 10 classes, shipped with the library) as
torch tensors with one fixed train/val/test split, for the ``crisp prune`` CLI and benchmarks.

The split does not depend on any experiment seed: 60 % / 20 % / 20 % of every class, chosen
once with a fixed generator, so test samples are never seen when tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from crisp.errors import CrispError

SPLIT_SEED = 20240601
SHARES = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class DigitsSplit:
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (1, 8, 8)


@lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise CrispError("the digits task needs scikit-learn, which is not installed: pip install 'crisp[digits]'") from exc
    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def load_digits_split() -> DigitsSplit:
    """Inputs ``[N, 1, 8, 8]`` float32 in [0, 1], labels int64; the fixed per-class split."""
    images, labels = _arrays()
    rng = np.random.default_rng(SPLIT_SEED)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a = int(round(len(idx) * SHARES[0]))
        b = a + int(round(len(idx) * SHARES[1]))
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part.append(chunk)
    x = torch.from_numpy(images)[:, None]
    y = torch.from_numpy(labels)
    sets = []
    for part in parts:
        idx = torch.from_numpy(np.sort(np.concatenate(part)))
        sets.append(TensorDataset(x[idx], y[idx]))
    return DigitsSplit(*sets)


def subset(dataset: TensorDataset, classes: tuple[int, ...] | list[int] | None) -> TensorDataset:
    """The samples of ``dataset`` whose label is in ``classes`` (all when None)."""
    x, y = dataset.tensors
    if classes is None:
        return dataset
    keep = torch.isin(y, torch.tensor(list(classes), dtype=torch.long))
    return TensorDataset(x[keep], y[keep])


def loader(dataset: TensorDataset, *, batch_size: int = 32, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader whose shuffling depends only on ``seed``."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen)
