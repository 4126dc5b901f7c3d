"""ComputeSaliency: score every weight of the prunable layers.

``method="magnitude"`` gives ``|W|`` (data-free, :func:`crisp.pruning.saliency.magnitude_saliency`). Any callable ``fn(module) -> {param name:
tensor}`` plugs in instead (e.g. class-aware Taylor saliency computed on calibration data); the
graph module passed to it has the user's parameter names.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import fx, nn

from crisp.errors import ModelError
from crisp.ir.tracing import layer_nodes
from crisp.passes.base import CrispPass
from crisp.pruning.saliency import magnitude_saliency

SaliencyFn = Callable[[nn.Module], dict[str, torch.Tensor]]


class ComputeSaliency(CrispPass):
    needs = ("layers",)
    adds = ("saliency",)

    def __init__(self, method: "str | SaliencyFn" = "magnitude"):
        self.fn: SaliencyFn | None = None  # None: magnitude of the prunable layers' weights
        if callable(method):
            self.fn = method
        elif method != "magnitude":
            raise ModelError(f"unknown saliency {method!r}; use 'magnitude' or a callable module -> {{param name: tensor}}")

    def call(self, graph_module: fx.GraphModule) -> bool:
        layers = [info for _, info in layer_nodes(graph_module) if info.prunable]
        if self.fn is None:
            scores = magnitude_saliency(graph_module, [info.weight_name for info in layers])
        else:
            scores = self.fn(graph_module)
            if not isinstance(scores, dict):
                raise ModelError(f"the saliency function must return a dict {{parameter name: tensor of the weight's "
                                 f"shape}}, got {type(scores).__name__}")
        for info in layers:
            sal = scores.get(info.weight_name)
            if sal is None:
                raise ModelError(f"the saliency function gave no score for layer {info.name!r} ({info.weight_name})")
            if not isinstance(sal, torch.Tensor):
                raise ModelError(f"the saliency function's score for layer {info.name!r} ({info.weight_name}) must be a "
                                 f"tensor of shape {info.weight_shape}, got {type(sal).__name__}")
            if tuple(sal.shape) != info.weight_shape:
                raise ModelError(
                    f"saliency of layer {info.name!r} has shape {tuple(sal.shape)}, expected {info.weight_shape}"
                )
            if not bool(torch.isfinite(sal).all()):
                raise ModelError(f"the saliency of layer {info.name!r} ({info.weight_name}) has NaN or Inf values")
            info.saliency = sal.detach().float().clone()
        return False
