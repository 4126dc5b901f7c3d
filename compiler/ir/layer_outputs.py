"""What one forward pass shows of given layers of an ``nn.Module``, without tracing: how often each is
called and the shape of its output, recorded by forward hooks. Used where crisp works on modules
rather than graphs (``crisp.prune``'s targets, the benchmark harness's fast layer specs)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def layer_outputs(model: nn.Module, *inputs, layers: Mapping[str, nn.Module] | None = None
                  ) -> tuple[dict[str, int], dict[str, tuple]]:
    """``(calls, shapes)`` of one no-grad pass ``model(*inputs)``: how often each of ``layers`` (name ->
    module; default every ``nn.Conv2d`` / ``nn.Linear`` of the model) ran, by name in the order given,
    and the shape of its last output, in the order of first call (layers that did not run have none).
    The model's mode is the caller's to set; the hooks are removed afterwards, also when the pass raises."""
    if layers is None:
        layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    calls: dict[str, int] = {name: 0 for name in layers}
    shapes: dict[str, tuple] = {}

    def hook(name: str):
        def record(_module, _inputs, output):
            calls[name] += 1
            shapes[name] = tuple(output.shape)
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls, shapes
