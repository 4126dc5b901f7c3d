"""One prunable-layer rule: the same model through crisp.compile, crisp.prune's layer finder and
torch.onnx.export + crisp.optimize_onnx_with_report gets the same decision and reason for every layer."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
from torch import nn

import crisp
from crisp.ir.conv_geometry import ConvGeometry, conv_out_size, same_pads
from crisp.ir.prunable import decide, excluded_by
from crisp.pruning.targets import find_prunable
from crisp.sparsity.pattern import Pattern

BLOCK = 16


class Mixed(nn.Module):
    """Every kind of layer the rule decides on, with blocks of 16."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(8, 16, 3, padding=1)  # K = 72: pruned
        self.se_reduce = nn.Conv2d(16, 4, 1)  # squeeze-excitation, K = 16: pruned
        self.se_expand = nn.Conv2d(4, 16, 1)  # K = 4 < 16: dense
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise: dense
        self.same = nn.Conv2d(16, 32, 3, padding="same")  # symmetric 'same': pruned
        self.same_even = nn.Conv2d(32, 32, 2, padding="same")  # asymmetric 'same': dense
        self.reflect = nn.Conv2d(32, 32, 3, padding=1, padding_mode="reflect")  # dense
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=2)  # dense
        self.shared = nn.Conv2d(32, 32, 1)  # called twice: dense
        self.fc = nn.Linear(32, 10)  # K = 32: pruned

    def forward(self, x):
        x = torch.relu(self.stem(x))
        s = x.mean((2, 3), keepdim=True)
        x = x * torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(s))))
        x = self.dw(x)
        x = self.grouped(self.reflect(self.same_even(self.same(x))))
        x = self.shared(torch.relu(self.shared(x)))
        return self.fc(x.mean((2, 3)))


EXPECTED_DENSE = {
    "se_expand": "smaller than one block", "dw": "depthwise", "same_even": "asymmetric padding",
    "reflect": "padding_mode='reflect'", "grouped": "grouped", "shared": "2 calls",
}


def _onnx_decisions(model: nn.Module, x: torch.Tensor, exclude) -> dict[str, set[tuple[bool, str]]]:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17)
    result = crisp.optimize_onnx_with_report(onnx.load_from_string(buffer.getvalue()), pattern="2:4", block=BLOCK,
                                             sparsity=0.6, saliency="magnitude", exclude=exclude)
    out: dict[str, set[tuple[bool, str]]] = {}
    for row in result.report.layers:  # a shared weight is one row per node; every one must agree
        out.setdefault(row.weight_name.removesuffix(".weight"), set()).add((row.pruned, row.reason))
    return out


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("exclude", [(), ("same",)])
def test_every_path_decides_every_layer_the_same(exclude):
    torch.manual_seed(0)
    model = Mixed().eval()
    x = torch.randn(2, 8, 12, 12)
    compiled = crisp.compile(model, (x,), pattern="2:4", block=BLOCK, sparsity=0.6, saliency="magnitude", exclude=exclude)
    fx = {r.name: (r.pruned, r.reason) for r in compiled.report.rows}
    prune_path = {t.name: (t.prunable, t.reason) for t in find_prunable(model, Pattern(2, 4, BLOCK), exclude, x)}
    onnx_path = _onnx_decisions(model, x, exclude)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert set(fx) == set(prune_path) == set(onnx_path) == set(names)
    for name in names:
        assert prune_path[name] == fx[name], name
        assert onnx_path[name] == {fx[name]}, name
    for name, words in EXPECTED_DENSE.items():
        assert not fx[name][0] and words in fx[name][1], (name, fx[name])
    assert fx["stem"] == fx["se_reduce"] == (True, "pruned")
    assert fx["same"] == ((False, "excluded by the user ('same')") if exclude else (True, "pruned"))
    assert fx["fc"] == (True, "pruned")


def test_rule_on_geometry_alone():
    conv3 = ConvGeometry((3, 3), pads=(1, 1, 1, 1))
    assert decide("conv", (32, 16, 3, 3), conv3, 32) == (True, "pruned")
    assert decide("conv", (32, 2, 3, 3), ConvGeometry((3, 3), groups=8), 8)[1].startswith("grouped conv (groups=8)")
    assert decide("conv", (32, 1, 3, 3), ConvGeometry((3, 3), groups=32), 8)[1].startswith("depthwise")
    assert "K=4 is smaller" in decide("conv", (16, 4, 1, 1), ConvGeometry((1, 1)), 8)[1]
    assert decide("linear", (16, 64), None, 32, uses=3)[1].startswith("weight is used by 3 calls")
    assert decide("conv", (8, 8, 3), None, 8)[1].startswith("1-D convolution")
    assert decide("linear", (16, 64), None, 32, excluded="fc") == (False, "excluded by the user ('fc')")
    assert excluded_by(("layer4.0.conv1", "layer4.0.conv1.weight"), ["layer4"]) == "layer4"
    assert excluded_by(("/fc/Gemm", "fc.weight"), ["fc"]) == "fc"
    assert excluded_by(("blocks.3.fc",), ["*.fc"]) == "*.fc"
    assert excluded_by(("fc2",), ["fc"]) is None


def test_conv_geometry_matches_torch():
    for kernel, stride, dilation, padding in [(3, 1, 1, 1), (4, 2, 1, 0), (5, 2, 2, 3), (2, 1, 1, "same"), (4, 1, 2, "same")]:
        conv = nn.Conv2d(3, 4, kernel, stride, padding, dilation)
        geometry = ConvGeometry.of_conv2d(conv)
        assert geometry.out_size(13, 10) == tuple(conv(torch.zeros(1, 3, 13, 10)).shape[-2:]), conv
    assert same_pads((2, 2)) == (0, 0, 1, 1) and same_pads((2, 2), upper=False) == (1, 1, 0, 0)
    assert ConvGeometry.of_conv2d(nn.Conv2d(3, 4, 2, padding="same")).padding is None
    assert conv_out_size(7, 3, 2, 1, 1) == 4
