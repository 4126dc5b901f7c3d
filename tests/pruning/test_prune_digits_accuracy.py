"""Behaviour on the digits task: pruned to 90 % with blocks (2:4 + blocks and block-only), the
personalized small CNN keeps its held-out accuracy for 2 classes (the benchmark's block-only and
CRISP runs ended at chance under a 1-epoch-per-step budget)."""

import pytest
import torch

pytest.importorskip("sklearn")

from crisp.pruning.prune import prune  # noqa: E402
from crisp.tasks.digits import class_accuracy, pretrain_small_cnn  # noqa: E402
from crisp.tasks.digits_data import load_digits_split, loader, subset  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    split = load_digits_split()
    return split, pretrain_small_cnn(split, epochs=6)


@pytest.mark.parametrize("pattern", ["2:4", "1:1"])
def test_blocks_at_90_percent_keep_two_class_accuracy(digits, pattern):
    split, model = digits
    classes = [1, 7]
    train = loader(subset(split.train, classes), batch_size=16, shuffle=True, seed=0)
    with torch.random.fork_rng(devices=[]):
        pruned, hist = prune(model, train, classes=classes, pattern=pattern, sparsity=0.9, steps=2,
                             epochs_per_step=2, progress=False)
    assert abs(hist.achieved_sparsity - 0.9) < 0.02
    assert class_accuracy(pruned, split.test, classes) > 0.9
