"""The crisp::hybrid_sparse_gemm op: reference kernel equals x @ (W*mask).T + b, and the
fake kernel lets the lowered graph trace and export."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

import crisp
from crisp import HybridSparseTensor, Pattern
from crisp.runtime.ops import call_hybrid_sparse_gemm
from crisp.sparsity.selection import select_hybrid_masks


def random_compact(rows, cols, p, gen, sparsity):
    w = torch.randn(rows, cols, generator=gen)
    mask = select_hybrid_masks({"w": torch.rand(rows, cols, generator=gen)}, p, sparsity).layers["w"].mask
    return w, mask, HybridSparseTensor.from_dense(w, mask, p)


@settings(max_examples=25, deadline=None)
@given(
    nm=st.sampled_from([(1, 4), (2, 4), (3, 4)]), block=st.sampled_from([4, 8, 16]),
    rows=st.integers(1, 50), cols=st.integers(4, 70), lead=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    bias=st.booleans(), seed=st.integers(0, 1000),
)
def test_reference_kernel_equals_masked_dense(nm, block, rows, cols, lead, bias, seed):
    p = Pattern(nm[0], nm[1], block)
    gen = torch.Generator().manual_seed(seed)
    w, mask, t = random_compact(rows, cols, p, gen, max(p.min_sparsity, 0.8))
    x = torch.randn(*lead, cols, generator=gen)
    b = torch.randn(rows, generator=gen) if bias else None
    y = call_hybrid_sparse_gemm(x, t, b)
    ref = torch.nn.functional.linear(x, w * mask, b)
    assert y.shape == (*lead, rows)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_non_contiguous_input():
    p = Pattern(2, 4, 8)
    gen = torch.Generator().manual_seed(0)
    w, mask, t = random_compact(20, 24, p, gen, 0.7)
    x = torch.randn(24, 6, generator=gen).t()  # [6, 24], not contiguous
    assert torch.allclose(call_hybrid_sparse_gemm(x, t), x @ (w * mask).t(), atol=1e-5)


def test_fake_kernel_traces_with_make_fx():
    p = Pattern(2, 4, 8)
    gen = torch.Generator().manual_seed(0)
    _, _, t = random_compact(16, 32, p, gen, 0.8)
    def fn(x, values, block_cols, offsets):
        return torch.ops.crisp.hybrid_sparse_gemm(x, values, block_cols, offsets, None, 16, 32, 2, 4, 8)

    gm = make_fx(fn, tracing_mode="fake")(torch.randn(3, 32), t.values, t.block_cols, t.offsets)
    assert any(n.target is torch.ops.crisp.hybrid_sparse_gemm.default for n in gm.graph.nodes)


def test_opcheck_passes():
    p = Pattern(2, 4, 8)
    gen = torch.Generator().manual_seed(0)
    _, _, t = random_compact(16, 32, p, gen, 0.8)
    args = (torch.randn(3, 32), t.values, t.block_cols, t.offsets, torch.randn(16), 16, 32, 2, 4, 8)
    torch.library.opcheck(torch.ops.crisp.hybrid_sparse_gemm.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_lowered_graph_exports_with_torch_export():
    model = crisp.models.build("small_cnn")
    x = torch.randn(2, 1, 8, 8)
    compiled = crisp.compile(model, (x,), pattern="2:4", block=16, sparsity=0.8)
    exported = torch.export.export(compiled.graph_module, (x,))
    targets = {n.target for n in exported.graph.nodes}
    assert torch.ops.crisp.hybrid_sparse_gemm.default in targets
    assert torch.allclose(exported.module()(x), compiled(x), atol=1e-5)
