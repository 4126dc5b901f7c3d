"""crisp.prune refuses the models compile refuses (meta device, lazy, half precision), naming the layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import crisp

BATCHES = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))]


def small(dtype=torch.float32, device="cpu") -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 64, 2)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("model, words", [
    (small(device="meta"), "meta device"),
    (small(dtype=torch.float16), "float16"),
    (nn.Sequential(nn.LazyConv2d(8, 3), nn.Flatten(), nn.LazyLinear(2)), "uninitialized"),
    ("not a model", "torch.nn.Module"),
])
def test_prune_refuses_models_it_cannot_prune(model, words):
    with pytest.raises(crisp.CrispError, match=words):
        crisp.prune(model, BATCHES, classes=[0, 1], pattern="2:4", block=16, sparsity=0.9)
