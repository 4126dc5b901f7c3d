"""The export fallback frontend and functional layers: shape-dependent control flow compiles through
torch.export with the same names, exactness and report as a traced model; functional-weight convs
are pruned exactly when their weight is a plain parameter and stay dense when it is computed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crisp
from crisp.ir import trace

from conftest import max_relative_error as max_rel_err


class SamePadConv(nn.Conv2d):
    """TF-style 'same' padding computed from the input size: symbolic tracing cannot branch on it."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        ph = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + kh - ih, 0)
        pw = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + kw - iw, 0)
        if ph > 0 or pw > 0:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameNet(nn.Module):
    def __init__(self, same: bool = True):
        super().__init__()
        self.stem = SamePadConv(3, 16, 3, stride=2) if same else nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)
        self.shape_head = same

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.conv(x))
        if self.shape_head:
            x = x.mean((2, 3)) if x.shape[-1] > 4 else x.amax((2, 3))  # a head that branches on the shape
        else:
            x = x.mean((2, 3))
        return self.fc(x)


def _seeded(cls, *args):
    torch.manual_seed(0)
    m = cls(*args).eval()
    return crisp.models.randomize_batchnorm(m)


X = torch.randn(2, 3, 15, 15, generator=torch.Generator().manual_seed(2))


def test_symbolic_trace_really_fails_on_it():
    with pytest.raises(crisp.TraceError, match="stem"):
        trace(_seeded(SameNet))


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_shape_dependent_model_compiles_through_export(target):
    model = _seeded(SameNet)
    c = crisp.compile(model, (X,), target=target, pattern="2:4", block=16, sparsity=0.8)
    assert c.graph_module.meta["crisp_frontend"] == "torch.export"
    assert sorted(c.masks) == ["conv.weight", "fc.weight", "stem.weight"]
    assert [r.name for r in c.report.rows] == ["stem", "conv", "fc"] and all(r.pruned for r in c.report.rows)
    reference = crisp.apply_masks(model, c.masks)
    with torch.no_grad():
        assert max_rel_err(c(X), reference(X)) <= 1e-4
    assert abs(c.report.achieved_sparsity - 0.8) < 0.05


def test_export_masks_and_report_match_the_traced_twin(tmp_path):
    """The same weights in a traceable twin (plain padding, no shape branch) give the same masks and rows."""
    same = _seeded(SameNet)
    twin = SameNet(same=False).eval()
    twin.load_state_dict(same.state_dict())
    c_export = crisp.compile(same, (X,), target="reference", pattern="2:4", block=16, sparsity=0.8)
    c_fx = crisp.compile(twin, (X,), target="reference", pattern="2:4", block=16, sparsity=0.8)
    assert c_fx.graph_module.meta["crisp_frontend"] == "torch.fx"
    assert c_export.masks.keys() == c_fx.masks.keys()
    for name in c_fx.masks:
        assert torch.equal(c_export.masks[name], c_fx.masks[name])
    strip = lambda rows: [(r.name, r.kind, r.gemm_shape, r.kept_blocks_per_row, r.density) for r in rows]
    assert strip(c_export.report.rows) == strip(c_fx.report.rows)
    c_export.save(tmp_path / "same.crisp")  # an exported capture saves and loads like any other
    assert torch.equal(crisp.load(tmp_path / "same.crisp")(X), c_export(X))


class FunctionalConv(nn.Module):
    def __init__(self, standardize: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(32, 16, 3, 3))
        self.bias = nn.Parameter(torch.randn(32))
        self.standardize = standardize

    def forward(self, x):
        w = self.weight
        if self.standardize:
            w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, padding=1)


class FunctionalNet(nn.Module):
    def __init__(self, standardize: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.block = FunctionalConv(standardize)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.block(torch.relu(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("standardize", [False, True])
def test_functional_weight_conv_is_exact_or_dense(standardize):
    model = _seeded(FunctionalNet, standardize)
    x = torch.randn(2, 3, 8, 8)
    c = crisp.compile(model, (x,), target="reference", pattern="2:4", block=16, sparsity=0.8)
    if standardize:  # the weight is computed: the conv runs as written, dense, and nothing masks it
        assert "block.weight" not in c.masks
    else:
        assert "block.weight" in c.masks and c.masks["block.weight"].float().mean() < 0.5
    reference = crisp.apply_masks(model, c.masks)
    with torch.no_grad():
        assert max_rel_err(c(x), reference(x)) <= 1e-4
    dense_out = model(x)
    assert max_rel_err(c(x), dense_out) > 1e-3  # something was pruned, so the check above can fail


def test_trace_error_only_when_export_fails_too():
    class Hopeless(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: neither tracer can capture it
                return self.conv(x)
            return self.conv(-x)

    with pytest.raises(crisp.TraceError, match="torch.export could not capture it either"):
        crisp.compile(Hopeless().eval(), (torch.randn(1, 3, 8, 8),), target="reference", block=4, sparsity=0.6)
