"""crisp.ir.layer_outputs: one hooked forward pass gives each layer's call count and last output shape,
leaves the model's mode alone and removes its hooks, also when the pass raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crisp.ir.layer_outputs import layer_outputs


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = nn.Linear(2, 2)
        self.fc = nn.Linear(8, 4)
        self.conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.conv(x).flatten(1)[:, :8]
        return self.fc(torch.cat([y[:, :4], self.fc(y)], 1))


def test_calls_and_last_shapes_in_order_of_first_call():
    model = Twice().train()
    calls, shapes = layer_outputs(model, torch.randn(2, 3, 6, 6))
    assert calls == {"unused": 0, "fc": 2, "conv": 1}
    assert list(shapes) == ["conv", "fc"] and shapes == {"conv": (2, 2, 3, 3), "fc": (2, 4)}
    assert model.training and not any(m._forward_hooks for m in model.modules())


def test_given_layers_only_and_hooks_removed_on_error():
    model = Twice()
    calls, shapes = layer_outputs(model, torch.randn(1, 3, 6, 6), layers={"conv": model.conv})
    assert calls == {"conv": 1} and list(shapes) == ["conv"]
    with pytest.raises(RuntimeError):
        layer_outputs(model, torch.randn(1, 5, 6, 6))
    assert not any(m._forward_hooks for m in model.modules())
