"""Property tests of the compact format: round trips are exact and sizes add up."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crisp.errors import FormatError
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.gemm_view import gemm_to_weight, weight_to_gemm
from crisp.sparsity.pattern import Pattern
from conftest import random_hybrid_mask


patterns = st.sampled_from([(1, 4), (2, 4), (3, 4), (1, 2), (2, 8), (1, 1), (3, 5)])


@settings(max_examples=60, deadline=None)
@given(
    nm=patterns,
    block_mult=st.integers(1, 4),
    rows=st.integers(1, 70),
    cols=st.integers(1, 90),
    keep=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_gemm_round_trip_is_exact(nm, block_mult, rows, cols, keep, seed):
    n, m = nm
    p = Pattern(n, m, m * block_mult * (2 if m < 4 else 1))
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    mask = random_hybrid_mask(rows, cols, p, gen, keep, exact=False)
    t = HybridSparseTensor.from_dense(w, mask, p)
    assert torch.equal(t.to_dense(), w * mask)
    assert t.values.shape[-1] == p.block // p.m * p.n
    # sizes add up: values + block columns + packed offsets
    count = t.values.numel()
    assert t.offsets.numel() == math.ceil(count * p.offset_bits / 8)
    assert t.nbytes == count * 4 + t.block_cols.numel() * t.block_cols.element_size() + t.offsets.numel()
    # every block-row stores the same number of blocks: the largest number any row keeps
    b = p.block
    nbr, nbc = -(-rows // b), -(-cols // b)
    padded = torch.zeros(nbr * b, nbc * b, dtype=torch.bool)
    padded[:rows, :cols] = mask
    per_row = padded.reshape(nbr, b, nbc, b).any(3).any(1).sum(1)
    assert t.kept_blocks_per_row == int(per_row.max())


@settings(max_examples=30, deadline=None)
@given(
    cout=st.integers(1, 40), cin=st.integers(1, 20), kh=st.integers(1, 3), kw=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_conv_weight_round_trip_uses_khwc_order(cout, cin, kh, kw, seed):
    p = Pattern(2, 4, 8)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, kh, kw, generator=gen)
    gmask = random_hybrid_mask(cout, cin * kh * kw, p, gen, 0.6, exact=False)
    mask = gemm_to_weight(gmask, w.shape)
    assert torch.equal(weight_to_gemm(mask), gmask)
    t = HybridSparseTensor.from_dense(w, mask, p)
    assert t.weight_shape == (cout, cin, kh, kw)
    assert torch.equal(t.to_dense(), w * mask)


def test_gemm_view_groups_input_channels_at_one_kernel_position():
    w = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2)
    g = weight_to_gemm(w)
    # first group of 4 along K: the 4 input channels at kernel position (0, 0)
    assert g[0, :4].tolist() == w[0, :, 0, 0].tolist()
    assert torch.equal(gemm_to_weight(g, w.shape), w)


def test_mask_breaking_n_of_m_is_refused_with_position():
    p = Pattern(2, 4, 4)
    w = torch.randn(4, 8)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[1, 4:7] = True
    with pytest.raises(FormatError, match=r"row 1, columns 4\.\.7"):
        HybridSparseTensor.from_dense(w, mask, p)


def test_offsets_take_two_bits_for_m4_and_metadata_formula():
    p = Pattern(2, 4, 32)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=gen)
    mask = random_hybrid_mask(64, 256, p, gen, 1.0, exact=False)
    t = HybridSparseTensor.from_dense(w, mask, p)
    assert t.offsets.numel() * 4 == t.values.numel()
    k_prime = t.kept_blocks_per_row * 32
    expected = 64 * k_prime * math.floor(math.log2(k_prime / 32)) / 1024 + 64 * k_prime * 0.5 * 2
    assert t.paper_metadata_bits == pytest.approx(expected)


def test_scale_rows_matches_dense_scaling():
    p = Pattern(1, 4, 8)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(11, 20, generator=gen)
    mask = random_hybrid_mask(11, 20, p, gen, 0.7, exact=False)
    s = torch.rand(11, generator=gen) + 0.5
    t = HybridSparseTensor.from_dense(w, mask, p).scale_rows(s)
    assert torch.allclose(t.to_dense(), (w * mask) * s[:, None])


def test_corrupt_tensor_is_refused():
    p = Pattern(2, 4, 8)
    t = HybridSparseTensor.from_dense(torch.randn(8, 16), torch.ones(8, 16, dtype=torch.bool) & (torch.arange(16) % 2 == 0), p)
    with pytest.raises(FormatError, match="out of range"):
        HybridSparseTensor(t.values, t.block_cols + 5, t.offsets, t.shape, p)
    with pytest.raises(FormatError, match="offsets"):
        HybridSparseTensor(t.values, t.block_cols, t.offsets[:-1], t.shape, p)


@pytest.mark.parametrize("nm", [(1, 4), (2, 4), (3, 4)])
def test_tensor_that_keeps_nothing_round_trips_and_gathers(nm):
    """An all-false mask gives k = 0 kept blocks per row; every view of it still works."""
    from crisp.runtime.reference_kernel import reference_hybrid_sparse_gemm

    p = Pattern(nm[0], nm[1], 16)
    w = torch.randn(40, 48)
    t = HybridSparseTensor.from_dense(w, torch.zeros(40, 48, dtype=torch.bool), p)
    assert t.block_cols.shape == (3, 0)
    assert torch.equal(t.to_dense(), torch.zeros(40, 48))
    assert t.gather_columns().shape == (3, 16, 0) and t.values_by_row().shape == (3, 16, 0)
    assert torch.equal(reference_hybrid_sparse_gemm(torch.randn(5, 48), t, None), torch.zeros(5, 40))
