"""crisp's fused 1x1 expansion + depthwise kernel equals torch's two convs (each clamped) on every
ISA path this CPU runs: property tests over shapes, channel tails, strides, paddings, dilations,
batch sizes, epilogues and input layouts, and its argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crisp.errors import ArgumentError
from crisp.runtime import cpu_capability as isa
from crisp.runtime import fast_kernel
from crisp.runtime.expand_depthwise import expand_depthwise_conv2d
from crisp.runtime.packed_weight import GemmPackedWeight
from conftest import max_relative_error

pytestmark = pytest.mark.skipif(not fast_kernel.available(), reason=f"fast kernels unavailable: {fast_kernel.unavailable_reason()}")

PATHS_HERE = [c for c in isa.CAPABILITIES if c in isa.supported() and fast_kernel.available(c)]
CLAMPS = st.sampled_from([(float("-inf"), float("inf")), (0.0, float("inf")), (0.0, 6.0)])


def reference(x, we, be, wd, bd, stride, padding, dilation, expand_clamp, clamp):
    expanded = F.conv2d(x.contiguous(), we, be).clamp(*expand_clamp)
    return F.conv2d(expanded, wd, bd, stride, padding, dilation, groups=wd.shape[0]).clamp(*clamp)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3), cin=st.integers(1, 40), rows=st.integers(1, 70), h=st.integers(1, 14), w=st.integers(1, 30),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pad=st.tuples(st.integers(0, 3), st.integers(0, 3)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    biases=st.tuples(st.booleans(), st.booleans()), expand_clamp=CLAMPS, clamp=CLAMPS,
    layout=st.sampled_from(["contiguous", "channels_last", "sliced"]), threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 10_000), path=st.sampled_from(PATHS_HERE),
)
def test_fused_expansion_and_depthwise_equal_torch(batch, cin, rows, h, w, kernel, stride, pad, dilation, biases,
                                                   expand_clamp, clamp, layout, threads, seed, path):
    if any(s + 2 * p - d * (k - 1) - 1 < 0 for s, p, d, k in zip((h, w), pad, dilation, kernel)):
        return  # empty output
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2 * cin if layout == "sliced" else cin, h, w, generator=gen)
    x = x[:, ::2] if layout == "sliced" else x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    we, wd = torch.randn(rows, cin, 1, 1, generator=gen), torch.randn(rows, 1, *kernel, generator=gen)
    be = torch.randn(rows, generator=gen) if biases[0] else None
    bd = torch.randn(rows, generator=gen) if biases[1] else None
    want = reference(x, we, be, wd, bd, stride, pad, dilation, expand_clamp, clamp)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = expand_depthwise_conv2d(x, GemmPackedWeight.from_dense(we), be, wd, bd, stride, pad, dilation,
                                                  expand_clamp=expand_clamp, clamp=clamp, capability=path)
    finally:
        torch.set_num_threads(before)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert max_relative_error(got, want) < 1e-5


@pytest.mark.parametrize("path", PATHS_HERE)
@pytest.mark.parametrize("cin, rows, size, stride", [(16, 96, 112, 2), (24, 144, 56, 1), (32, 192, 28, 2), (20, 40, 30, 1)])
def test_fused_kernel_on_mobilenet_sized_layers_equals_torch(cin, rows, size, stride, path):
    """Layers large enough to be split into bands of rows on two threads (each band recomputes
    the expanded rows its first windows share with the band before)."""
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(1, cin, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    we, be = torch.randn(rows, cin, 1, 1, generator=gen), torch.randn(rows, generator=gen)
    wd, bd = torch.randn(rows, 1, 3, 3, generator=gen), torch.randn(rows, generator=gen)
    want = reference(x, we, be, wd, bd, stride, 1, 1, (0.0, 6.0), (0.0, 6.0))
    got = expand_depthwise_conv2d(x, GemmPackedWeight.from_dense(we), be, wd, bd, stride, 1, 1,
                                              expand_clamp=(0.0, 6.0), clamp=(0.0, 6.0), capability=path)
    assert max_relative_error(got, want) < 1e-5


def test_fused_kernel_refuses_a_mismatched_pair():
    packed = GemmPackedWeight.from_dense(torch.randn(8, 4, 1, 1))
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ArgumentError, match="6 channels but the expansion makes 8"):
        expand_depthwise_conv2d(x, packed, None, torch.randn(6, 1, 3, 3))
    with pytest.raises(ArgumentError, match="must be a 1x1 conv"):
        expand_depthwise_conv2d(x, GemmPackedWeight.from_dense(torch.randn(8, 4, 3, 3)), None,
                                            torch.randn(8, 1, 3, 3))
    with pytest.raises(RuntimeError, match="expansion takes 4 input channels"):
        expand_depthwise_conv2d(torch.randn(1, 5, 5, 5), packed, None, torch.randn(8, 1, 3, 3))
