"""The class-aware saliency of an ONNX model is crisp's one Taylor saliency: an exported torch model
gets the same masks through ``crisp.optimize_onnx(saliency="taylor")`` as through
``crisp.taylor_saliency`` on the torch model, for every calibration form the ONNX path accepts."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import crisp
from crisp.pruning.class_data import CalibrationBatches, DataError
from crisp.sparsity.gemm_view import gemm_to_weight, weight_to_gemm
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.selection import select_hybrid_masks

BLOCK, SPARSITY, CLASSES = 8, 0.8, [1, 3]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = Net().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), buffer, opset_version=13, dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    xs = torch.randn(48, 3, 8, 8)
    with torch.no_grad():
        ys = net(xs).argmax(1)
    return net, onnx.load_from_string(buffer.getvalue()), xs, ys


def torch_masks(net, xs, ys):
    """Masks from crisp.taylor_saliency on the torch model, keyed by weight name."""
    batches = [(xs[i:i + 32], ys[i:i + 32]) for i in range(0, len(xs), 32)]
    sal = crisp.taylor_saliency(net, batches, CLASSES)
    sel = select_hybrid_masks({n: weight_to_gemm(s) for n, s in sal.items()}, Pattern(2, 4, BLOCK), SPARSITY)
    return {n: gemm_to_weight(sel.layers[n].mask, tuple(s.shape)).numpy() for n, s in sal.items()}


@pytest.mark.parametrize("form", ["pair", "batches", "unlabeled"])
def test_onnx_taylor_masks_equal_the_torch_taylor_masks(setup, form):
    net, model, xs, ys = setup
    calibration = {"pair": (xs.numpy(), ys.numpy()), "unlabeled": xs.numpy(),
                   "batches": [(xs[i:i + 32], ys[i:i + 32]) for i in range(0, len(xs), 32)]}[form]
    res = crisp.optimize_onnx_with_report(model, block=BLOCK, sparsity=SPARSITY, saliency="taylor",
                                          calibration=calibration, classes=CLASSES)
    expected = torch_masks(net, xs, ys)
    by_weight = {row.weight_name: res.masks[row.name] for row in res.report.layers if row.pruned}
    assert sorted(by_weight) == sorted(expected) == ["conv1.weight", "conv2.weight", "fc.weight"]
    for name, mask in by_weight.items():
        assert np.array_equal(mask, expected[name]), name


def test_calibration_batches_forms():
    x = np.zeros((5, 2), np.float64)
    y = np.array([0, 1, 0, 1, 1])
    pairs = list(CalibrationBatches((x, y), batch_size=2, dtype=torch.float32))
    assert [tuple(b[0].shape) for b in pairs] == [(2, 2), (2, 2), (1, 2)] and pairs[0][0].dtype == torch.float32
    assert torch.equal(torch.cat([b[1] for b in pairs]), torch.as_tensor(y))
    labelled = list(CalibrationBatches([x[:3], x[3:]], label=lambda t: torch.zeros(len(t), dtype=torch.long)))
    assert [len(b[1]) for b in labelled] == [3, 2]
    with pytest.raises(DataError, match="batch 0 has no labels"):
        list(CalibrationBatches(x))
    once = CalibrationBatches(iter([(x, y)]))  # a one-shot iterator is kept, so the batches can be read twice
    assert len(list(once)) == len(list(once)) == 1
