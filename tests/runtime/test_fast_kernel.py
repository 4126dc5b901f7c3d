"""The fast CPU kernels equal the reference kernel on every ISA path this CPU runs (avx512, avx2,
the portable one always; property tests over paths, shapes, patterns, blocks, conv geometry, batch
sizes, fused epilogues and non-contiguous inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crisp.errors import ArgumentError, FormatError
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.gemm_view import gemm_to_weight
from crisp.sparsity.pattern import Pattern
from crisp.runtime import cpu_capability as isa
from crisp.runtime import fast_kernel
from crisp.runtime.channel_linear import channel_linear
from crisp.runtime.packed_weight import ChannelPackedWeight, GemmPackedWeight, PackedHybridWeight
from crisp.runtime.reference_kernel import reference_hybrid_sparse_gemm
from conftest import max_error_vs_float32_bound, max_relative_error, random_hybrid_mask

pytestmark = pytest.mark.skipif(not fast_kernel.available(), reason=f"fast kernels unavailable: {fast_kernel.unavailable_reason()}")

PATTERNS = st.sampled_from([(1, 4), (2, 4), (3, 4), (4, 4)])
BLOCKS = st.sampled_from([16, 32, 64])
PATHS_HERE = [c for c in isa.CAPABILITIES if c in isa.supported() and fast_kernel.available(c)]
PATHS = st.sampled_from(PATHS_HERE)


@pytest.mark.parametrize("path", isa.CAPABILITIES)
def test_every_path_the_cpu_runs_builds_and_reports_its_isa(path):
    if path not in isa.supported():
        pytest.skip(f"this CPU ({isa.cpu_model()}) lacks {path}: {fast_kernel.unavailable_reason(path)}")
    assert fast_kernel.available(path), fast_kernel.unavailable_reason(path)
    assert fast_kernel.ops(path).isa_name() == path
    assert fast_kernel.channel_max_m(path) == (16 if path == "avx512" else 8)


def random_input(batch, cin, h, w, layout, gen):
    """An NCHW input in one of three memory layouts: contiguous, channels-last, or "sliced" (a
    non-contiguous view: every other channel of a wider tensor)."""
    if layout == "sliced":
        return torch.randn(batch, 2 * cin, h, w, generator=gen)[:, ::2]
    x = torch.randn(batch, cin, h, w, generator=gen)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def conv_magnitude(x, masked_weight, bias, residual, stride, padding, dilation):
    """The conv summed over absolute values: the scale of its float32 rounding error."""
    y = F.conv2d(x.contiguous().abs(), masked_weight.abs(), None if bias is None else bias.abs(), stride, padding, dilation)
    return y if residual is None else y + residual.abs()


def reference_conv(x, hst, bias, kernel, stride, padding, dilation):
    """The lowered reference path: unfold in (kh, kw, cin) order -> reference GEMM -> NCHW."""
    n, c, h, w = x.shape
    kh, kw = kernel
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, c*kh*kw, L]
    cols = cols.unflatten(1, (c, kh * kw)).permute(0, 3, 2, 1).flatten(2)  # [N, L, K] (kh, kw, cin)
    y = reference_hybrid_sparse_gemm(cols, hst, bias)  # [N, L, rows]
    return y.transpose(1, 2).unflatten(2, (oh, ow))


@settings(max_examples=70, deadline=None)
@given(
    nm=PATTERNS, block=BLOCKS, cin=st.integers(1, 24), cout=st.integers(1, 40),
    kh=st.sampled_from([1, 2, 3, 5]), kw=st.sampled_from([1, 3]), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    batch=st.integers(1, 3), hw=st.tuples(st.integers(1, 23), st.integers(1, 23)), bias=st.booleans(),
    act=st.sampled_from(["none", "relu", "relu6"]), residual=st.booleans(),
    layout=st.sampled_from(["contiguous", "channels_last", "sliced"]),
    seed=st.integers(0, 10_000), path=PATHS,
)
def test_conv_equals_reference(nm, block, cin, cout, kh, kw, stride, padding, dilation, batch, hw, bias, act,
                               residual, layout, seed, path):
    p = Pattern(nm[0], nm[1], block)
    h, w = hw[0] + dilation[0] * (kh - 1), hw[1] + dilation[1] * (kw - 1)  # at least one output position
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(cout, cin, kh, kw, generator=gen)
    mask = gemm_to_weight(random_hybrid_mask(cout, kh * kw * cin, p, gen), weight.shape)
    hst = HybridSparseTensor.from_dense(weight, mask, p)
    packed = PackedHybridWeight.from_compact(hst)
    b = torch.randn(cout, generator=gen) if bias else None
    x = random_input(batch, cin, h, w, layout, gen)
    want = reference_conv(x, hst, b, (kh, kw), stride, padding, dilation)
    res = torch.randn(want.shape, generator=gen) if residual else None
    if res is not None:
        want = want + res
    activation = {"none": lambda t: t, "relu": torch.relu, "relu6": F.relu6}[act]
    want = activation(want)
    got = fast_kernel.conv2d(x, packed, b, (kh, kw), stride, padding, dilation, relu=act != "none",
                             clamp_max=6.0 if act == "relu6" else None, residual=res, channels_last=layout == "channels_last",
                             capability=path)
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    magnitude = conv_magnitude(x, weight * mask, b, res, stride, padding, dilation)
    assert max_error_vs_float32_bound(got, want, magnitude, kh * kw * cin + 2) <= 1
    # the dense masked conv agrees too (a second, independent oracle)
    # (oracles run torch's conv on a contiguous input: torch 2.13's channels-last conv crashes on some
    # geometries, see crisp.runtime.dense_path.unit_dilation_where_kernel_is_one)
    dense = F.conv2d(x.contiguous(), weight * mask, b, stride, padding, dilation) + (0 if res is None else res)
    assert max_relative_error(got, activation(dense)) <= 1e-4


@settings(max_examples=80, deadline=None)
@given(
    nm=st.sampled_from([(1, 4), (2, 4), (3, 4), (4, 4), (2, 8), (1, 2), (4, 16)]), block=BLOCKS, groups=st.integers(1, 10),
    cout=st.integers(1, 70), kh=st.sampled_from([1, 3]), kw=st.sampled_from([1, 2, 3]),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), batch=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 17), st.integers(1, 17)), bias=st.booleans(), act=st.sampled_from(["none", "relu", "relu6"]),
    residual=st.booleans(), layout=st.sampled_from(["contiguous", "channels_last", "sliced"]), seed=st.integers(0, 10_000),
    path=PATHS,
)
def test_channel_kernel_equals_reference(nm, block, groups, cout, kh, kw, stride, padding, dilation, batch, hw, bias, act,
                                         residual, layout, seed, path):
    """The channel-vector (NHWC) kernel, for convs whose N:M groups are runs of input channels."""
    p = Pattern(nm[0], nm[1], block)
    assume(p.m <= fast_kernel.channel_max_m(path))
    cin = groups * p.m
    h, w = hw[0] + dilation[0] * (kh - 1), hw[1] + dilation[1] * (kw - 1)
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(cout, cin, kh, kw, generator=gen)
    mask = gemm_to_weight(random_hybrid_mask(cout, kh * kw * cin, p, gen), weight.shape)
    hst = HybridSparseTensor.from_dense(weight, mask, p)
    assert ChannelPackedWeight.supports(hst, cin, fast_kernel.channel_max_m(path))
    packed = ChannelPackedWeight.from_compact(hst, cin)
    b = torch.randn(cout, generator=gen) if bias else None
    x = random_input(batch, cin, h, w, layout, gen)
    want = reference_conv(x, hst, b, (kh, kw), stride, padding, dilation)
    res = torch.randn(want.shape, generator=gen) if residual else None
    activation = {"none": lambda t: t, "relu": torch.relu, "relu6": F.relu6}[act]
    want = activation(want if res is None else want + res)
    got = fast_kernel.conv2d(x, packed, b, (kh, kw), stride, padding, dilation, relu=act != "none",
                             clamp_max=6.0 if act == "relu6" else None, residual=res, capability=path)
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    magnitude = conv_magnitude(x, weight * mask, b, res, stride, padding, dilation)
    assert max_error_vs_float32_bound(got, want, magnitude, kh * kw * cin + 2) <= 1


@settings(max_examples=60, deadline=None)
@given(
    nm=PATTERNS, block=BLOCKS, rows=st.integers(1, 70), k=st.integers(1, 150),
    lead=st.lists(st.integers(1, 9), min_size=1, max_size=3), bias=st.booleans(), act=st.sampled_from(["none", "relu", "relu6"]),
    transposed=st.booleans(), seed=st.integers(0, 10_000), path=PATHS, layout=st.sampled_from(["rows", "channel"]),
)
def test_linear_equals_reference(nm, block, rows, k, lead, bias, act, transposed, seed, path, layout):
    """Both Linear kernels: rows, and the channel kernel on the input read as one image."""
    p = Pattern(nm[0], nm[1], block)
    if layout == "channel":
        assume(k % p.m == 0)
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, k, generator=gen)
    hst = HybridSparseTensor.from_dense(weight, random_hybrid_mask(rows, k, p, gen), p)
    b = torch.randn(rows, generator=gen) if bias else None
    x = torch.randn(*lead[:-1], k, lead[-1], generator=gen).transpose(-1, -2) if transposed else torch.randn(*lead, k, generator=gen)
    want = {"none": lambda t: t, "relu": torch.relu, "relu6": F.relu6}[act](reference_hybrid_sparse_gemm(x, hst, b))
    kwargs = {"relu": act != "none", "clamp_max": 6.0 if act == "relu6" else None, "capability": path}
    if layout == "channel":
        got = channel_linear(x, ChannelPackedWeight.from_compact(hst, k), b, **kwargs)
    else:
        got = fast_kernel.linear(x, PackedHybridWeight.from_compact(hst), b, **kwargs)
    assert got.shape == (*x.shape[:-1], rows)
    magnitude = x.abs() @ hst.to_dense().abs().T + (0 if b is None else b.abs())
    assert max_error_vs_float32_bound(got, want, magnitude, k + 1) <= 1


def test_channel_linear_refuses_a_conv_weight_and_a_wrong_width():
    p = Pattern(2, 4, 16)
    gen = torch.Generator().manual_seed(0)
    conv = torch.randn(16, 8, 3, 3, generator=gen)
    mask = gemm_to_weight(random_hybrid_mask(16, 72, p, gen), conv.shape)
    with pytest.raises(ArgumentError, match="not a Linear layer"):
        channel_linear(torch.randn(2, 72), ChannelPackedWeight.from_compact(HybridSparseTensor.from_dense(conv, mask, p), 8))
    linear = HybridSparseTensor.from_dense(torch.randn(16, 32, generator=gen), random_hybrid_mask(16, 32, p, gen), p)
    with pytest.raises(ArgumentError, match="takes 32 input features"):
        channel_linear(torch.randn(2, 31), ChannelPackedWeight.from_compact(linear, 32))
    assert channel_linear(torch.randn(0, 32), ChannelPackedWeight.from_compact(linear, 32)).shape == (0, 16)


@pytest.mark.parametrize("path", PATHS_HERE)
@pytest.mark.parametrize("batch,hw,cin,cout", [(1, 56, 64, 64), (8, 7, 512, 96), (2, 14, 256, 128)])
def test_resnet_sized_layers(batch, hw, cin, cout, path):
    """Tiles, tile shifts and channel chunks at the sizes the models use (wide and tiny images)."""
    gen = torch.Generator().manual_seed(hw)
    p = Pattern(2, 4, 32)
    for kernel, stride, pad in (((1, 1), 1, 0), ((3, 3), 1, 1), ((3, 3), 2, 1), ((1, 1), 2, 0)):
        weight = torch.randn(cout, cin, *kernel, generator=gen)
        mask = gemm_to_weight(random_hybrid_mask(cout, cin * kernel[0] * kernel[1], p, gen), weight.shape)
        hst = HybridSparseTensor.from_dense(weight, mask, p)
        packs = [PackedHybridWeight.from_compact(hst), ChannelPackedWeight.from_compact(hst, cin)]
        x = torch.randn(batch, cin, hw, hw, generator=gen)
        want = torch.relu(F.conv2d(x, weight * mask, None, stride, pad))
        for packed in packs:
            got = fast_kernel.conv2d(x, packed, None, kernel, stride, pad, 1, relu=True, capability=path)
            assert max_relative_error(got, want) <= 1e-5, (kernel, stride, type(packed).__name__)


def _random_3x3_hybrid(cout: int, cin: int, gen: torch.Generator):
    """A random 3x3 conv weight, a random 2:4 mask in 16x16 blocks, and the compact weight they make."""
    p = Pattern(2, 4, 16)
    weight = torch.randn(cout, cin, 3, 3, generator=gen)
    mask = gemm_to_weight(random_hybrid_mask(cout, 9 * cin, p, gen), weight.shape)
    return weight, mask, HybridSparseTensor.from_dense(weight, mask, p)


@pytest.mark.parametrize("path", PATHS_HERE)
def test_threads_do_not_change_results(path):
    gen = torch.Generator().manual_seed(1)
    weight, mask, hst = _random_3x3_hybrid(48, 32, gen)
    packs = [PackedHybridWeight.from_compact(hst), ChannelPackedWeight.from_compact(hst, 32)]
    x = torch.randn(3, 32, 20, 20, generator=gen)
    before = torch.get_num_threads()
    try:
        for packed in packs:
            outs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outs.append(fast_kernel.conv2d(x, packed, None, 3, 1, 1, 1, capability=path))
            assert torch.equal(outs[0], outs[1])  # every output is computed by one thread in a fixed order
    finally:
        torch.set_num_threads(before)


@settings(max_examples=80, deadline=None)
@given(
    cin=st.integers(1, 40), cout=st.integers(1, 90), kh=st.sampled_from([1, 2, 3]), kw=st.sampled_from([1, 3]),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)), padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), batch=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 15), st.integers(1, 15)), bias=st.booleans(), act=st.sampled_from(["none", "relu", "relu6"]),
    residual=st.booleans(), layout=st.sampled_from(["contiguous", "channels_last", "sliced"]), seed=st.integers(0, 10_000),
    path=PATHS,
)
def test_dense_gemm_conv_equals_conv2d(cin, cout, kh, kw, stride, padding, dilation, batch, hw, bias, act, residual, layout,
                                       seed, path):
    # every output channel count (panels of 16, 2 vectors a tile, a 1-vector and a partial-lane
    # remainder), position count (tiles of GP positions and a short last one) and conv geometry
    # (1x1 stride 1 unpadded reads the input in place; the others gather patches, zeros in the padding)
    gen = torch.Generator().manual_seed(seed)
    h, w = hw[0] + dilation[0] * (kh - 1), hw[1] + dilation[1] * (kw - 1)  # at least one output position
    weight = torch.randn(cout, cin, kh, kw, generator=gen)
    b = torch.randn(cout, generator=gen) if bias else None
    x = random_input(batch, cin, h, w, layout, gen)
    want = F.conv2d(x.contiguous(), weight, b, stride, padding, dilation)
    res = torch.randn(want.shape, generator=gen) if residual else None
    want = want + (0 if res is None else res)
    want = {"none": want, "relu": torch.relu(want), "relu6": F.relu6(want)}[act]
    got = fast_kernel.conv2d(x, GemmPackedWeight.from_dense(weight), b, (kh, kw), stride, padding, dilation,
                             relu=act != "none", clamp_max=6.0 if act == "relu6" else None, residual=res, capability=path)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert max_relative_error(got, want) <= 1e-5


def test_dense_gemm_refuses_a_kernel_size_its_weight_does_not_have():
    packed = GemmPackedWeight.from_dense(torch.randn(8, 4, 3, 3))
    with pytest.raises(ArgumentError, match=r"\[8, 4, 3, 3\] is not a \[1, 1\] conv kernel"):
        fast_kernel.conv2d(torch.randn(1, 4, 6, 6), packed, None, 1, 1, 0, 1)
    with pytest.raises(FormatError, match="packs conv weights"):
        GemmPackedWeight.from_dense(torch.randn(8, 4))


@pytest.mark.parametrize("path", PATHS_HERE)
def test_layout_changes_run_on_crisps_pool_not_through_torch_ops(path):
    # A torch copy inside a kernel runs on torch's OpenMP pool, whose worker then spins on the core
    # crisp's helper needs (ResNet-50 at 2 threads: 1.45x slower). Every input and residual the
    # kernels take in the other layout is copied by crisp itself: no aten op runs inside them.
    gen = torch.Generator().manual_seed(3)
    weight, mask, hst = _random_3x3_hybrid(32, 32, gen)
    nchw = torch.randn(1, 32, 12, 12, generator=gen)
    nhwc = nchw.contiguous(memory_format=torch.channels_last)
    calls = [  # (packed weight, input in the layout the kernel does not use, output layout)
        (PackedHybridWeight.from_compact(hst), nhwc, False),
        (PackedHybridWeight.from_compact(hst), nchw, True),
        (ChannelPackedWeight.from_compact(hst, 32), nchw, True),
    ]
    for packed, x, channels_last in calls:
        residual = (nhwc if not channels_last else nchw).clone()  # the residual in the other layout too
        want = fast_kernel.conv2d(x.clone(), packed, None, 3, 1, 1, 1, residual=residual.clone(),
                                  channels_last=channels_last, capability=path)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            got = fast_kernel.conv2d(x, packed, None, 3, 1, 1, 1, residual=residual, channels_last=channels_last,
                                     capability=path)
        copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")]
        assert copies == [], f"{type(packed).__name__}, channels_last={channels_last}: {copies}"
        assert torch.equal(got, want)
        dense = F.conv2d(nchw, weight * mask, None, 1, 1) + residual
        assert max_relative_error(got, dense) <= 1e-4


def test_packed_weight_holds_exactly_the_kept_weights():
    gen = torch.Generator().manual_seed(3)
    p = Pattern(2, 4, 16)
    weight = torch.randn(37, 5, 3, 3, generator=gen)  # rows and K (45) not multiples of the block
    mask = gemm_to_weight(random_hybrid_mask(37, 45, p, gen), weight.shape)
    hst = HybridSparseTensor.from_dense(weight, mask, p)
    packed = PackedHybridWeight.from_compact(hst)
    assert torch.equal(packed.to_dense(), weight * mask)
    assert packed.nnz == int((mask & (weight != 0)).sum())  # no padding, no pruned entries
    rows = torch.repeat_interleave(torch.arange(37), packed.row_ptr[1:] - packed.row_ptr[:-1])
    order = rows * 45 + packed.cols.to(torch.int64)
    assert bool((order[1:] > order[:-1]).all())  # row-major, ascending columns


def test_packed_weight_rejects_out_of_range_columns():
    good = PackedHybridWeight(torch.tensor([0, 1]), torch.tensor([3], dtype=torch.int32), torch.ones(1), (1, 4), (1, 4))
    with pytest.raises(FormatError, match="outside"):
        PackedHybridWeight(good.row_ptr, torch.tensor([4], dtype=torch.int32), good.vals, (1, 4), (1, 4))
    with pytest.raises(FormatError, match="row_ptr"):
        PackedHybridWeight(torch.tensor([0, 2]), good.cols, good.vals, (1, 4), (1, 4))


def test_mismatched_input_is_refused_not_read_out_of_bounds():
    packed = PackedHybridWeight(torch.tensor([0, 1]), torch.tensor([26], dtype=torch.int32), torch.ones(1), (1, 27), (1, 3, 3, 3))
    with pytest.raises(RuntimeError, match="input features"):
        fast_kernel.conv2d(torch.randn(1, 2, 5, 5), packed, None, 3, 1, 1, 1)
    with pytest.raises(RuntimeError, match="float32"):
        fast_kernel.conv2d(torch.randn(1, 3, 5, 5, dtype=torch.float64), packed, None, 3, 1, 1, 1)


def test_fake_kernels_give_output_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    packed = PackedHybridWeight(torch.tensor([0, 1, 1]), torch.tensor([0], dtype=torch.int32), torch.ones(1), (2, 27), (2, 3, 3, 3))
    with FakeTensorMode(allow_non_fake_inputs=True):
        y = fast_kernel.conv2d(torch.empty(4, 3, 11, 9), packed, None, 3, 2, 1, 1)
        z = fast_kernel.linear(torch.empty(5, 27), packed, None)
    assert tuple(y.shape) == (4, 2, 6, 5)
    assert tuple(z.shape) == (5, 2)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3), channels=st.integers(1, 70), h=st.integers(1, 13), w=st.integers(1, 13),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)), channels_last=st.booleans(), nan=st.booleans(),
    seed=st.integers(0, 10_000), path=PATHS,
)
def test_max_pool_equals_torch(batch, channels, h, w, kernel, stride, pad, channels_last, nan, seed, path):
    """crisp's channels-last max pool equals F.max_pool2d, NaN included, in either input layout."""
    pad = tuple(min(p, k // 2) for p, k in zip(pad, kernel))
    if any(s + 2 * p < k for s, p, k in zip((h, w), pad, kernel)):
        return  # empty output: torch refuses it too
    x = torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(seed))
    if nan:
        x[0, channels // 2, h // 2, w // 2] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = fast_kernel.max_pool2d(x, kernel, stride, pad, capability=path)
    want = F.max_pool2d(x, kernel, stride, pad)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 40), h=st.integers(1, 160), w=st.integers(1, 160),
       seed=st.integers(0, 10_000), path=PATHS)
def test_layout_change_to_channels_last_copies_every_element(batch, channels, h, w, seed, path):
    """The NCHW -> NHWC copy on crisp's pool (a 1x1 max pool is the identity): images large enough
    that the copy is split into several work items, channel counts of the small-channel copies."""
    x = torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(seed))
    got = fast_kernel.max_pool2d(x, (1, 1), (1, 1), (0, 0), capability=path)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, x)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 600), h=st.integers(1, 9), w=st.integers(1, 9),
       channels_last=st.booleans(), seed=st.integers(0, 10_000), path=PATHS)
def test_global_avg_pool_equals_torch(batch, channels, h, w, channels_last, seed, path):
    x = torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(seed))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = fast_kernel.global_avg_pool(x, capability=path)
    assert got.shape == (batch, channels, 1, 1)
    assert max_relative_error(got, F.adaptive_avg_pool2d(x, 1)) < 1e-5


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 2), channels=st.integers(1, 90), h=st.integers(1, 12), w=st.integers(1, 12),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pad=st.tuples(st.integers(0, 3), st.integers(0, 3)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    bias=st.booleans(), act=st.sampled_from(["none", "relu", "relu6"]), channels_last=st.booleans(),
    seed=st.integers(0, 10_000), path=PATHS,
)
def test_depthwise_conv_equals_torch(batch, channels, h, w, kernel, stride, pad, dilation, bias, act, channels_last, seed,
                                     path):
    """crisp's depthwise kernel equals F.conv2d(groups=C) with the fused clamp, padding and dilation included."""
    if any(s + 2 * p - d * (k - 1) - 1 < 0 for s, p, d, k in zip((h, w), pad, dilation, kernel)):
        return  # empty output
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, h, w, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, *kernel, generator=gen)
    b = torch.randn(channels, generator=gen) if bias else None
    want = F.conv2d(x.contiguous(), weight, b, stride, pad, dilation, groups=channels)
    if act != "none":
        want = want.clamp(0, 6 if act == "relu6" else None)
    got = fast_kernel.depthwise_conv2d(x, weight, b, stride, pad, dilation, relu=act != "none",
                                       clamp_max=6.0 if act == "relu6" else None, capability=path)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert max_relative_error(got, want) < 1e-5


@pytest.mark.parametrize("path", PATHS_HERE)
@pytest.mark.parametrize("channels, kernel, stride, dilation", [
    (24, 3, 1, 1), (13, 3, 2, 1), (40, 5, 1, 2), (17, 3, 1, 2), (8, 1, 2, 1), (33, (3, 5), (2, 1), (1, 2)),
])
def test_depthwise_conv_wide_rows_equal_torch(channels, kernel, stride, dilation, path):
    """Rows wide enough for the kernel's interior runs (8 pixels whose windows lie inside the
    input), with the padded edges, the pixels left over after the runs and a channel tail."""
    gen = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, 11, 45, generator=gen).contiguous(memory_format=torch.channels_last)
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    weight = torch.randn(channels, 1, *k, generator=gen)
    b = torch.randn(channels, generator=gen)
    pad = tuple(d * (kk - 1) // 2 for kk, d in zip(k, dilation if isinstance(dilation, tuple) else (dilation,) * 2))
    want = F.conv2d(x.contiguous(), weight, b, stride, pad, dilation, groups=channels).clamp(0, 6)
    got = fast_kernel.depthwise_conv2d(x, weight, b, stride, pad, dilation, relu=True, clamp_max=6.0, capability=path)
    assert got.shape == want.shape
    assert max_relative_error(got, want) < 1e-5


@pytest.mark.parametrize("path", PATHS_HERE)
@pytest.mark.parametrize("block", [16, 32])
def test_channel_kernel_on_a_fully_kept_weight_equals_conv2d(block, path):
    """Dense convs run on the channel kernel as 4:4 weights (the broadcast path, no permutes)."""
    gen = torch.Generator().manual_seed(block)
    weight = torch.randn(40, 32, 3, 3, generator=gen)
    packed = ChannelPackedWeight.from_compact(
        HybridSparseTensor.from_dense(weight, torch.ones_like(weight, dtype=torch.bool), Pattern(4, 4, block)), 32)
    assert bool((packed.idx == torch.arange(4, dtype=torch.uint8).view(1, 1, 4, 1)).all())  # entries in order
    x = torch.randn(2, 32, 11, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(40, generator=gen)
    got = fast_kernel.conv2d(x, packed, bias, 3, 2, 1, 1, relu=True, capability=path)
    assert max_relative_error(got, torch.relu(F.conv2d(x, weight, bias, 2, 1))) < 1e-5
