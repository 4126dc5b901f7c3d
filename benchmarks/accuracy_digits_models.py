"""Models and data for ``accuracy_digits.py``: the benchmark's own split of scikit-learn digits
(pretrain part / held-out part in two folds), the deeper residual CNN at 16x16, and the filter
chains that filter pruning follows in each model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from crisp.models import small_cnn
from crisp.tasks.digits_data import load_digits_split

SPLIT_SEED = 20261201
PRETRAIN_SHARE = 0.4  # the rest (60 %, about 108 samples a class) is held out: 2 classes -> about 216 test samples


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 with a 1x1 projection on the residual path."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.b, self.bn_b = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.c, self.bn_c = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down, self.bn_down = nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn_a(self.a(x)))
        y = F.relu(self.bn_b(self.b(y)))
        return F.relu(self.bn_c(self.c(y)) + self.bn_down(self.down(x)))


class ResidualCNN(nn.Module):
    """Stem 3x3 (dense: K = 9) and two bottlenecks on 16x16 digits: 9 prunable layers (1x1 and 3x3
    convs, the residual projections and the classifier)."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.stem, self.bn_stem = nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.block1 = Bottleneck(width, width, 2 * width, 1)
        self.block2 = Bottleneck(2 * width, width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_stem(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(x.mean((2, 3)))


# producer weight -> consumer weights whose inputs are its output channels (inputs per channel)
FILTER_CHAINS = {
    "small_cnn": [
        ("conv1.weight", ["conv2.weight"], 1), ("conv2.weight", ["conv3.weight"], 1),
        ("conv3.weight", ["conv4.weight"], 1), ("conv4.weight", ["fc1.weight"], 4), ("fc1.weight", ["fc2.weight"], 1),
    ],
    # only the channels inside each bottleneck: the residual sums tie the others together
    "residual_cnn": [
        ("block1.a.weight", ["block1.b.weight"], 1), ("block1.b.weight", ["block1.c.weight"], 1),
        ("block2.a.weight", ["block2.b.weight"], 1), ("block2.b.weight", ["block2.c.weight"], 1),
    ],
}
INPUT_SIZE = {"small_cnn": 8, "residual_cnn": 16}
# block size per model: with 32x32 blocks the residual CNN's 1x1 convs (K = 64) keep half their blocks at the floor
BLOCK = {"small_cnn": 32, "residual_cnn": 8}


def build(name: str, seed: int = 0) -> nn.Module:
    """The named model with its initial weights drawn from ``seed`` (the same model whatever ran before)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return small_cnn(num_classes=10, in_channels=1, input_size=8) if name == "small_cnn" else ResidualCNN()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def benchmark_split(input_size: int = 8) -> tuple[TensorDataset, TensorDataset, torch.Tensor]:
    """``(pretrain, held_out, fold)``: 40 % of every class for pretraining (and the user-class
    fine-tunes), the other 60 % held out and never trained on; ``fold[i]`` in {0, 1} assigns held-out
    sample ``i`` to one of two folds (per class, fixed)."""
    s = load_digits_split()
    x = torch.cat([s.train.tensors[0], s.val.tensors[0], s.test.tensors[0]])
    y = torch.cat([s.train.tensors[1], s.val.tensors[1], s.test.tensors[1]])
    order = torch.argsort(y * 10_000 + torch.arange(len(y)))  # a fixed order independent of crisp's split
    x, y = _resize(x[order], input_size), y[order]
    rng = np.random.default_rng(SPLIT_SEED)
    pre, held, fold = [], [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y.numpy() == c))
        cut = int(round(PRETRAIN_SHARE * len(idx)))
        pre.append(idx[:cut])
        held.append(idx[cut:])
        fold.append(np.arange(len(idx) - cut) % 2)
    pi, hi = torch.from_numpy(np.concatenate(pre)), torch.from_numpy(np.concatenate(held))
    return TensorDataset(x[pi], y[pi]), TensorDataset(x[hi], y[hi]), torch.from_numpy(np.concatenate(fold))


def pretrain(model: nn.Module, data: TensorDataset, *, epochs: int, seed: int = 0, lr: float = 1e-3) -> nn.Module:
    """Adam on all 10 digits of the pretrain part (batch 32)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data.tensors
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 32):
            idx = perm[i: i + 32]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def fold_accuracy(model: nn.Module, held: TensorDataset, fold: torch.Tensor, classes) -> tuple[float, float, int]:
    """Accuracy on the user classes' held-out samples of fold 0 and of fold 1, and the number of
    samples. The personalized model predicts one of the user classes: argmax over their outputs
    (what ``shrink_head=True`` gives), so a non-user logit never decides."""
    x, y = held.tensors
    ids = torch.tensor(sorted(classes))
    keep = torch.isin(y, ids)
    with torch.no_grad():
        right = ids[model.eval()(x[keep])[:, ids].argmax(1)] == y[keep]
    f = fold[keep]
    return float(right[f == 0].float().mean()), float(right[f == 1].float().mean()), int(keep.sum())
