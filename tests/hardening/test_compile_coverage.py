"""Every conv-like or linear-like op of a model appears in crisp.compile's report (pruned, or dense with
its reason), and a Conv2d subclass with the parent's forward is an ordinary conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crisp

X = torch.randn(1, 32, 4, 4)


class One(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


class MyConv(nn.Conv2d):
    pass


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(32, 32, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight)


def _rows(model, x):
    return {r.name: r for r in crisp.compile(model, (x,), target="reference").report.rows}


@pytest.mark.parametrize("layer, x, words", [
    (nn.Conv1d(32, 32, 3), torch.randn(1, 32, 8), "Conv1d"),
    (nn.Conv3d(32, 32, 1), torch.randn(1, 32, 2, 2, 2), "Conv3d"),
    (nn.ConvTranspose2d(32, 32, 3), X, "transposed"),
])
def test_other_convs_are_reported_dense_with_reason(layer, x, words):
    rows = _rows(One(layer), x)
    assert list(rows) == ["layer"]
    assert not rows["layer"].pruned and words in rows["layer"].reason and "dense" in rows["layer"].reason


def test_conv2d_subclass_is_an_ordinary_conv():
    rows = _rows(One(MyConv(32, 32, 3)), X)
    assert rows["layer"].pruned


def test_functional_conv_on_own_parameter_is_reported():
    rows = _rows(Functional(), X)
    (row,) = rows.values()
    assert not row.pruned and "weight" in row.reason and "nn.Conv2d" in row.reason


def test_export_module_layers_are_reported():
    model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 32))
    exported = torch.export.export(model, (X,)).module()
    rows = crisp.compile(exported, (X,), target="reference").report.rows
    assert len(rows) == 2  # the conv and the linear: pruned or dense, never missing
    assert all(r.pruned or r.reason for r in rows)


def test_subclass_counts_in_prune_targets():
    from crisp.pruning.targets import find_prunable
    from crisp.sparsity.pattern import Pattern

    (t,) = find_prunable(One(MyConv(32, 32, 3)), Pattern(2, 4, 32))
    assert t.prunable
