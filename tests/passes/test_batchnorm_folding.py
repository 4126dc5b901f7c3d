"""BatchNorm folding in one place (crisp.ir.batchnorm, on torch.nn.utils.fusion): the folded layer
computes what layer + BatchNorm computed, and the graph fold leaves alone what it must not fold."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from crisp.bench.cpu_peers import fold_batchnorm as bench_fold
from crisp.ir.batchnorm import batchnorm_affine, fold_batchnorm, fold_batchnorms
from crisp.sparsity.masking import relative_error


def _bn(cls, c: int, affine: bool = True) -> nn.Module:
    bn = cls(c, affine=affine)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    if affine:
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    return bn.eval()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_folded_layer_equals_layer_then_batchnorm(affine, bias):
    torch.manual_seed(0)
    cases = [(nn.Conv2d(4, 6, 3, bias=bias), _bn(nn.BatchNorm2d, 6, affine), torch.randn(2, 4, 7, 7)),
             (nn.Linear(5, 6, bias=bias), _bn(nn.BatchNorm1d, 6, affine), torch.randn(3, 5))]
    for layer, bn, x in cases:
        with torch.no_grad():
            want = bn(layer(x))
            folded = copy.deepcopy(layer)
            fold_batchnorm(folded, bn)
            assert relative_error(folded(x), want) <= 1e-6
            scale, shift = batchnorm_affine(bn, torch.float64)
            assert scale.dtype == torch.float64
            y = layer(x).double()
            shape = (1, -1) + (1,) * (y.dim() - 2)
            assert relative_error(y * scale.view(shape) + shift.view(shape), want.double()) <= 1e-6


def test_fold_keeps_zero_weights_zero():
    conv = nn.Conv2d(4, 8, 3)
    with torch.no_grad():
        conv.weight[:, :2] = 0
    fold_batchnorm(conv, _bn(nn.BatchNorm2d, 8))
    assert (conv.weight[:, :2] == 0).all()


class Cases(nn.Module):
    """One foldable pair and three a fold would break: a conv feeding two nodes, a shared conv
    module, a BatchNorm in training mode."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 4, 1), _bn(nn.BatchNorm2d, 4)
        self.b, self.bn_b = nn.Conv2d(4, 4, 1), _bn(nn.BatchNorm2d, 4)
        self.shared, self.bn_s = nn.Conv2d(4, 4, 1), _bn(nn.BatchNorm2d, 4)
        self.c, self.bn_c = nn.Conv2d(4, 4, 1), _bn(nn.BatchNorm2d, 4).train()

    def forward(self, x):
        x = self.bn_a(self.a(x))
        y = self.b(x)
        x = self.bn_b(y) + y
        x = self.bn_s(self.shared(x)) + self.shared(x)
        return self.bn_c(self.c(x))


def test_graph_fold_folds_only_what_is_safe():
    torch.manual_seed(0)
    model = Cases().eval()
    model.bn_c.train()
    x = torch.randn(2, 3, 5, 5)
    gm = fx.symbolic_trace(copy.deepcopy(model))
    folded = fold_batchnorms(gm)
    gm.recompile()
    assert [(node.target, bn) for node, bn in folded] == [("a", "bn_a")]
    assert not hasattr(gm, "bn_a") and hasattr(gm, "bn_b") and hasattr(gm, "bn_s") and hasattr(gm, "bn_c")
    model.bn_c.eval()
    gm.bn_c.eval()
    with torch.no_grad():
        assert relative_error(gm(x), model(x)) <= 1e-6


def test_benchmark_peer_folds_like_torch_fuse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _bn(nn.BatchNorm2d, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5),
                          _bn(nn.BatchNorm1d, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    ours, torchs = bench_fold(model), fuse(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ours.modules())
    with torch.no_grad():
        assert relative_error(ours(x), torchs(x)) <= 1e-6
        assert relative_error(ours(x), model(x)) <= 1e-5
