"""Bad input to crisp.prune / taylor_saliency / crisp.compile(saliency="taylor") gets a clear crisp error."""

import pytest
import torch
from torch import nn

import crisp
from crisp.errors import CrispError, PatternError
from crisp.pruning.prune import prune
from crisp.pruning.saliency import taylor_saliency


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5)).eval()


def data(labels=None, n=16):
    x = torch.randn(n, 32)
    y = torch.arange(n) % 5 if labels is None else labels
    return [(x, y)]


def call(**kw):
    args = dict(classes=[1, 2], pattern="2:4", block=8, sparsity=0.6, steps=1, epochs_per_step=0, progress=False)
    args.update(kw)
    train = args.pop("train", data())
    return prune(model(), train, **args)


@pytest.mark.parametrize("classes, words", [
    ([1, 7], ["[7]", "outside", "5 classes"]),
    ([-1], ["[-1]", "outside"]),
    ([], ["empty"]),
    (None, ["required"]),
    ([1, 1], ["twice"]),
    (["a"], ["integers"]),
])
def test_bad_class_lists(classes, words):
    with pytest.raises(CrispError) as err:
        call(classes=classes)
    for w in words:
        assert w in str(err.value)


def test_no_samples_of_the_user_classes():
    with pytest.raises(CrispError, match=r"no samples of the user classes \[3, 4\]"):
        call(classes=[3, 4], train=data(torch.zeros(16, dtype=torch.long)))
    with pytest.raises(CrispError, match="val_data holds no samples"):
        call(val_data=data(torch.zeros(16, dtype=torch.long)))


@pytest.mark.parametrize("labels, words", [
    (torch.zeros(16), ["integer class ids", "float32"]),
    (torch.zeros(16, 5), ["one-hot", "argmax"]),
    (torch.zeros(16, 1, dtype=torch.long), ["1-D", "(16, 1)"]),
    (torch.zeros(15, dtype=torch.long), ["15 labels"]),
    (torch.zeros(16, dtype=torch.bool), ["integer class ids"]),
])
def test_labels_of_wrong_dtype_or_shape(labels, words):
    with pytest.raises(CrispError) as err:
        call(train=data(labels))
    for w in words:
        assert w in str(err.value)


def test_batches_that_are_not_pairs():
    with pytest.raises(CrispError, match="batch 0 must be an"):
        call(train=[torch.randn(4, 32)])
    with pytest.raises(CrispError, match="iterable of"):
        call(train=42)


@pytest.mark.parametrize("sparsity, words", [
    (0.3, ["below what 2:4 alone gives"]),
    (1.0, ["below 1"]),
    (0.99, ["unreachable", "at most"]),
])
def test_sparsity_unreachable_with_the_pattern(sparsity, words):
    with pytest.raises(PatternError) as err:
        call(sparsity=sparsity)
    for w in words:
        assert w in str(err.value)


def test_unknown_method_saliency_and_bad_counts():
    with pytest.raises(CrispError, match="method"):
        call(method="obd")
    with pytest.raises(CrispError, match="saliency"):
        call(saliency="hessian")
    with pytest.raises(CrispError, match="steps"):
        call(steps=-1)
    with pytest.raises(CrispError, match="steps"):
        call(steps=1.5)
    with pytest.raises(CrispError, match="epochs_per_step"):
        call(epochs_per_step=-1)


def test_no_prunable_layer():
    small = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CrispError, match="no layer can be pruned"):
        prune(small, [(torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))], classes=[0], block=8, sparsity=0.5, progress=False)


def test_taylor_saliency_and_compile_refuse_calibration_without_user_classes():
    only_zeros = data(torch.zeros(16, dtype=torch.long))
    with pytest.raises(CrispError, match="no batch of user-class samples"):
        taylor_saliency(model(), only_zeros, [2])
    with pytest.raises(CrispError, match="outside the model's outputs"):
        taylor_saliency(model(), data(), [9])
    with pytest.raises(CrispError):
        crisp.compile(model(), (torch.randn(1, 32),), pattern="2:4", block=8, sparsity=0.6,
                      saliency="taylor", calibration=only_zeros, classes=[2])
