"""crisp.prune: bad arguments raise a CrispError naming the argument before any training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import crisp
from crisp.errors import CrispError


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4))


DATA = [(torch.randn(8, 32, 4, 4), torch.randint(0, 4, (8,)))]


@pytest.mark.parametrize("kwargs, words", [
    (dict(lr="fast"), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(callbacks=5), "callbacks"),
    (dict(callbacks=[print, 5]), "callbacks"),
    (dict(seed="abc"), "seed"),
    (dict(exclude=["nope"]), "exclude"),
    (dict(exclude=None), "exclude"),
    (dict(momentum=-1), "momentum"),
])
def test_bad_arguments(kwargs, words):
    with pytest.raises(CrispError, match=words):
        crisp.prune(model(), DATA, classes=[0, 1], steps=1, epochs_per_step=0, warmup_epochs=0, **kwargs)


def test_data_of_the_wrong_input_shape():
    bad = [(torch.randn(8, 3, 4, 4), torch.randint(0, 4, (8,)))]
    with pytest.raises(CrispError, match=r"train_data's inputs \(shape \[8, 3, 4, 4\]\)"):
        crisp.prune(model(), bad, classes=[0, 1], steps=1, epochs_per_step=0, warmup_epochs=0)
