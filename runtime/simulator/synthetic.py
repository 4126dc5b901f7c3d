"""Random pruned layers as the compiler would describe them, for tests and examples.

``random_layers`` draws random weights and saliency for a few conv/linear shapes, selects
hybrid masks with :func:`crisp.sparsity.selection.select_hybrid_masks` and compresses each weight with
:meth:`crisp.sparsity.hybrid_tensor.HybridSparseTensor.from_dense`, returning :class:`~crisp.ir.layer_info.LayerInfo`
objects exactly like ``crisp.compile(...).layers`` (without a graph).
"""

from __future__ import annotations

import torch

from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.gemm_view import gemm_to_weight, weight_to_gemm
from crisp.ir.conv_geometry import ConvGeometry
from crisp.ir.layer_info import LayerInfo
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.selection import select_hybrid_masks

# name -> (weight shape, output positions per sample, stride)
DEFAULT_SHAPES = {
    "conv_a": ((64, 32, 3, 3), 196, 1),
    "conv_b": ((128, 64, 1, 1), 49, 2),
    "fc": ((100, 256), 1, 1),
}


def random_layers(pattern: Pattern, sparsity: float, shapes: dict | None = None, *, batch: int = 1, seed: int = 0,
                  per_layer: bool = False) -> list[LayerInfo]:
    """LayerInfo objects with masks and compact tensors for ``shapes`` (default: a small conv/conv/fc
    set). ``per_layer=True`` selects each layer on its own instead of globally."""
    shapes = shapes or DEFAULT_SHAPES
    gen = torch.Generator().manual_seed(seed)
    weights = {n: torch.randn(s[0], generator=gen) for n, s in shapes.items()}
    sal = {n: weight_to_gemm(torch.rand(s[0], generator=gen)) for n, s in shapes.items()}
    if per_layer:
        masks = {n: select_hybrid_masks({n: sal[n]}, pattern, sparsity).layers[n].mask for n in shapes}
    else:
        sel = select_hybrid_masks(sal, pattern, sparsity)
        masks = {n: sel.layers[n].mask for n in shapes}
    out = []
    for name, (shape, positions, stride) in shapes.items():
        w = weights[name]
        mask = gemm_to_weight(masks[name], shape)
        kind = "conv" if len(shape) == 4 else "linear"
        conv = None
        if kind == "conv":
            p = shape[2] // 2
            conv = ConvGeometry(tuple(shape[2:]), (stride, stride), pads=(p, p, p, p))
        rows, k = weight_to_gemm(w).shape
        out.append(LayerInfo(
            name=name, kind=kind, weight_name=f"{name}.weight", weight_shape=tuple(shape), gemm_shape=(rows, k),
            out_positions=positions, batch=batch, prunable=True, reason="pruned", conv=conv, mask=mask,
            compact=HybridSparseTensor.from_dense(w, mask, pattern),
        ))
    return out


def dense_layer(name: str, rows: int, k: int, positions: int, batch: int = 1) -> LayerInfo:
    """A Linear-like LayerInfo that stays dense (no mask, no compact tensor)."""
    return LayerInfo(name=name, kind="linear", weight_name=f"{name}.weight", weight_shape=(rows, k),
                     gemm_shape=(rows, k), out_positions=positions, batch=batch, prunable=False,
                     reason="kept dense")
