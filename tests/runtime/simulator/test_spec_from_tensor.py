"""The simulator's per-layer numbers come from the layer's HybridSparseTensor: change the tensor's
kept blocks and the spec and the simulated layer follow."""

from __future__ import annotations

import numpy as np
import torch

from crisp.ir.conv_geometry import ConvGeometry
from crisp.ir.layer_info import LayerInfo
from crisp.runtime.simulator import get_arch, simulate_specs, specs_from_layers
from crisp.runtime.simulator.workload import LayerSpec
from crisp.sparsity.gemm_view import gemm_to_weight, weight_to_gemm
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern

PATTERN = Pattern(2, 4, 8)


def _nm_mask(rows: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """A 2:4 mask over the whole [rows, k] GEMM (every block kept)."""
    scores = torch.rand(rows, k // 4, 4, generator=gen)
    top = scores.topk(2, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True).reshape(rows, k)


def _drop_blocks(mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep only the first ``keep`` block columns of every block-row."""
    out = mask.clone()
    out[:, keep * PATTERN.block:] = False
    return out


def _layer(weight: torch.Tensor, gemm_mask: torch.Tensor) -> LayerInfo:
    mask = gemm_to_weight(gemm_mask, tuple(weight.shape))
    return LayerInfo(
        name="conv", kind="conv", weight_name="conv.weight", weight_shape=tuple(weight.shape),
        gemm_shape=tuple(weight_to_gemm(weight).shape), out_positions=36, batch=2, prunable=True, reason="pruned",
        conv=ConvGeometry((3, 3), pads=(1, 1, 1, 1)), mask=mask, compact=HybridSparseTensor.from_dense(weight, mask, PATTERN),
    )


def _check_follows(spec: LayerSpec, hst: HybridSparseTensor, kept: int) -> None:
    assert spec.kept_blocks_per_row == hst.kept_blocks_per_row
    assert np.array_equal(spec.block_cols, hst.block_cols.numpy())
    assert spec.stored_values == hst.num_values
    assert spec.metadata_bytes == hst.metadata_nbytes
    assert spec.index_bytes == hst.block_cols.element_size()
    assert spec.paper_metadata_bits == hst.paper_metadata_bits
    assert spec.kept_weights == kept


def test_spec_follows_the_tensor():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 8, 3, 3, generator=gen)  # GEMM 24 x 72: 3 block-rows, 9 block columns
    full = _nm_mask(24, 72, gen)
    info = _layer(weight, full)
    arch = get_arch("crisp-stc")
    before_spec = specs_from_layers([info])[0]
    _check_follows(before_spec, info.compact, int(full.sum()))
    before = simulate_specs([before_spec], arch).layers[0]

    fewer = _drop_blocks(full, 3)  # a tensor built from another mask: 3 of 9 blocks per row
    info.compact = HybridSparseTensor.from_dense(weight, gemm_to_weight(fewer, tuple(weight.shape)), PATTERN)
    after_spec = specs_from_layers([info])[0]
    assert after_spec.kept_blocks_per_row == 3 < before_spec.kept_blocks_per_row == 9
    _check_follows(after_spec, info.compact, int(fewer.sum()))  # the stale info.mask keeps only what is stored
    after = simulate_specs([after_spec], arch).layers[0]
    assert after.format_metadata_bytes == info.compact.metadata_nbytes < before.format_metadata_bytes
    assert after.paper_metadata_bits == info.compact.paper_metadata_bits < before.paper_metadata_bits
    assert after.macs_act < before.macs_act and after.cycles < before.cycles


def test_kept_weights_without_a_mask_are_the_stored_non_zeros():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(16, 32, generator=gen)
    mask = _drop_blocks(_nm_mask(16, 32, gen), 2)
    hst = HybridSparseTensor.from_dense(weight, mask, PATTERN)
    spec = LayerSpec.from_hybrid_tensor("fc", hst, 10, kind="linear")
    _check_follows(spec, hst, int(mask.sum()))
    assert np.array_equal(spec.row_nnz, mask.sum(1).numpy())
    # from_mask is the spec of the tensor the mask gives
    assert LayerSpec.from_mask("fc", mask, PATTERN, 10).header() == LayerSpec.from_hybrid_tensor("fc", hst, 10).header()
