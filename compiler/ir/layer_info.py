"""`LayerInfo`: what crisp knows about one prunable-candidate layer, stored in
``node.meta["crisp"]`` of the IR and read by every later pass, backend and report.

Passes fill it in stages: finding prunable layers sets the geometry and the decision (with a
reason), saliency sets ``saliency``, selection sets ``mask``, lowering sets ``compact``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crisp.ir.conv_geometry import ConvGeometry
from crisp.sparsity.hybrid_tensor import HybridSparseTensor

META_KEY = "crisp"


@dataclass
class LayerInfo:
    name: str  # module path, e.g. "layer1.0.conv1"
    kind: str  # "conv" or "linear"
    weight_name: str  # parameter name in the user's model, e.g. "layer1.0.conv1.weight"
    weight_shape: tuple[int, ...]
    gemm_shape: tuple[int, int]  # (rows, K) of the GEMM view
    out_positions: int  # output positions per sample (oh*ow for conv, product of leading dims / batch for linear)
    batch: int  # batch size of the example inputs
    prunable: bool
    reason: str  # why the layer is or is not pruned
    conv: ConvGeometry | None = None  # a conv's kernel, strides, dilations, pads, groups, padding mode
    saliency: torch.Tensor | None = None  # in the weight's shape
    mask: torch.Tensor | None = None  # bool, in the weight's shape
    compact: HybridSparseTensor | None = None  # set when lowered
    has_bias: bool = False
    folded_batchnorm: str | None = None  # name of the BatchNorm folded into this layer

    @property
    def macs_dense(self) -> int:
        """Multiply-accumulates of the dense layer per sample."""
        rows, k = self.gemm_shape
        return rows * k * self.out_positions

    @property
    def macs_kept(self) -> int:
        """Multiply-accumulates that remain per sample (kept weights x output positions)."""
        if self.mask is None:
            return self.macs_dense
        return int(self.mask.sum()) * self.out_positions

    @property
    def kind_label(self) -> str:
        if self.kind == "conv" and self.conv is not None:
            return self.conv.label(self.weight_shape[0])
        return self.kind
