"""`CompiledModel`: what ``crisp.compile`` returns — callable like the model, with the lowered
graph, the masks by parameter name, the per-layer report and the backend's artifacts."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from crisp.backends.onnx_backend import export_compiled_to_onnx
from crisp.ir.layer_info import LayerInfo
from crisp.report import Report
from crisp.simulate_api import simulate


class CompiledModel:
    def __init__(
        self,
        module: nn.Module,
        graph_module: fx.GraphModule,
        layers: list[LayerInfo],
        report: Report,
        target: str,
        artifacts: dict[str, Any] | None = None,
    ):
        self.module = module
        self.graph_module = graph_module
        self.layers = layers
        self.report = report
        self.target = target
        self.artifacts = artifacts or {}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Original parameter name -> bool mask of that weight's shape, for every pruned layer."""
        return {info.weight_name: info.mask for info in self.layers if info.mask is not None}

    @property
    def sparsity(self) -> float | None:
        return self.report.achieved_sparsity

    def to_onnx(self, path=None, **kwargs):
        """Export to crisp's compact ONNX form (stock onnxruntime runs it); returns the ModelProto."""
        return export_compiled_to_onnx(self, path, **kwargs)

    def simulate(self, arch="crisp-stc", *, strict: bool = False):
        """Replay this model on an accelerator model (see :func:`crisp.simulate`)."""
        return simulate(self, arch, strict=strict)

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def __repr__(self) -> str:
        pruned = sum(1 for i in self.layers if i.compact is not None)
        return (
            f"CompiledModel(target={self.target!r}, pattern={self.report.pattern!r}, layers pruned={pruned}/"
            f"{len(self.layers)}, sparsity={self.report.achieved_sparsity})"
        )
