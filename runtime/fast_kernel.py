"""The fast CPU kernels: build (once, cached), load, self-check, and call them.

``runtime/csrc/hybrid_sparse_cpu.cpp`` is compiled with ``torch.utils.cpp_extension`` on first
use for the machine it runs on (``-O3 -march=native``, OpenMP through ATen's thread pool) and
cached under ``$CRISP_CACHE_DIR`` (default ``$XDG_CACHE_HOME/crisp`` or ``~/.cache/crisp``),
keyed by the source, the torch version, the compiler flags and the CPU's feature flags, so a
later process (or a rebuilt source) finds or makes the right build. Loading registers the ops:

- ``crisp::hybrid_sparse_conv2d_fast(x, row_ptr, cols, vals, in_features, bias, residual,
  kernel_size, stride, padding, dilation, clamp_min, clamp_max, channels_last)``: conv with a
  :class:`PackedHybridWeight` (vectorized over output positions, NCHW planes), fused bias, residual
  add and clamp (ReLU is [0, inf), ReLU6 [0, 6]);
- ``crisp::hybrid_sparse_conv2d_nhwc(x, vals, idx, gtap, gcin, rows, n, m, bias, residual,
  kernel_size, stride, padding, dilation, clamp_min, clamp_max)``: the same with a
  :class:`ChannelPackedWeight` (vectorized over output channels, channels-last in and out; needs
  AVX-512, see :func:`channel_kernel_available`);
- ``crisp::hybrid_sparse_linear_fast(x, row_ptr, cols, vals, in_features, bias, clamp_min, clamp_max)``;
- ``crisp::channel_kernel_available()``: whether this build has the channel-vector kernel;
- ``crisp::max_pool2d_nhwc(x, kernel_size, stride, padding)`` and ``crisp::global_avg_pool_nhwc(x)``:
  the pools between the convs, channels-last, on the kernels' own threads;
- ``crisp::depthwise_conv2d_nhwc(x, weight [kh*kw, C], bias, kernel_size, stride, padding, dilation,
  clamp_min, clamp_max)``: the dense depthwise convs (MobileNetV2), bias and clamp fused.

If the build or the self-check fails (no compiler, unsupported CPU or flags, a wrong result),
:func:`available` returns False after ONE :class:`FastKernelUnavailableWarning`; callers then run
the reference kernel (the ``cpu`` backend keeps the reference graph). Setting
``CRISP_DISABLE_FAST_KERNEL=1`` forces that fallback.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern
from crisp.runtime.packed_weight import ChannelPackedWeight, PackedHybridWeight

SOURCE = Path(__file__).parent / "csrc" / "hybrid_sparse_cpu.cpp"
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)
DISABLE_ENV = "CRISP_DISABLE_FAST_KERNEL"


class FastKernelUnavailableWarning(RuntimeWarning):
    """The fast CPU kernels could not be used; crisp runs the (slow, correct) reference kernel."""


class _State:
    lock = threading.Lock()
    checked = False
    ok = False
    reason: str | None = None
    warned = False
    library: str | None = None


def cache_dir() -> Path:
    """Where built kernels are kept: ``$CRISP_CACHE_DIR``, else ``$XDG_CACHE_HOME/crisp``, else ``~/.cache/crisp``."""
    if os.environ.get("CRISP_CACHE_DIR"):
        return Path(os.environ["CRISP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crisp"


def _cpu_signature() -> str:
    """The CPU feature flags (what ``-march=native`` compiles for), so a build never runs on a CPU it does not fit."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key() -> str:
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join(CFLAGS + LDFLAGS).encode(),
                 platform.machine().encode(), _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _build_and_load() -> str:
    """Compile (or reuse) the extension and load it into this process; returns the library path."""
    from torch.utils import cpp_extension

    name = f"crisp_hybrid_sparse_cpu_{build_key()}"
    directory = cache_dir() / "extensions" / name
    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=name,
        sources=[str(SOURCE)],
        extra_cflags=list(CFLAGS),
        extra_ldflags=list(LDFLAGS),
        build_directory=str(directory),
        is_python_module=False,
        verbose=False,
    )


def _conv_out_shape(x, rows, kernel_size, stride, padding, dilation) -> tuple:
    def pair(v, i):
        return v[0] if len(v) == 1 else v[i]

    n, _, h, w = x.shape
    oh = (h + 2 * pair(padding, 0) - pair(dilation, 0) * (pair(kernel_size, 0) - 1) - 1) // pair(stride, 0) + 1
    ow = (w + 2 * pair(padding, 1) - pair(dilation, 1) * (pair(kernel_size, 1) - 1) - 1) // pair(stride, 1) + 1
    return (n, rows, oh, ow)


def _register_fakes() -> None:
    @torch.library.register_fake("crisp::hybrid_sparse_conv2d_fast")
    def _(x, row_ptr, cols, vals, in_features, bias, residual, kernel_size, stride, padding, dilation, clamp_min,
          clamp_max, channels_last):
        out = x.new_empty(_conv_out_shape(x, row_ptr.shape[0] - 1, kernel_size, stride, padding, dilation))
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    @torch.library.register_fake("crisp::hybrid_sparse_conv2d_nhwc")
    def _(x, vals, idx, gtap, gcin, rows, n, m, bias, residual, kernel_size, stride, padding, dilation, clamp_min,
          clamp_max):
        out = x.new_empty(_conv_out_shape(x, rows, kernel_size, stride, padding, dilation))
        return out.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("crisp::max_pool2d_nhwc")
    def _(x, kernel_size, stride, padding):
        n, c, h, w = x.shape
        kh, kw = kernel_size if len(kernel_size) == 2 else (kernel_size[0],) * 2
        sh, sw = stride if len(stride) == 2 else (stride[0],) * 2
        ph, pw = padding if len(padding) == 2 else (padding[0],) * 2
        out = x.new_empty((n, c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1))
        return out.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("crisp::depthwise_conv2d_nhwc")
    def _(x, weight, bias, kernel_size, stride, padding, dilation, clamp_min, clamp_max):
        out = x.new_empty(_conv_out_shape(x, x.shape[1], kernel_size, stride, padding, dilation))
        return out.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("crisp::global_avg_pool_nhwc")
    def _(x):
        return x.new_empty((x.shape[0], x.shape[1], 1, 1))

    @torch.library.register_fake("crisp::hybrid_sparse_linear_fast")
    def _(x, row_ptr, cols, vals, in_features, bias, clamp_min, clamp_max):
        return x.new_empty((*x.shape[:-1], row_ptr.shape[0] - 1))


def _self_check() -> None:
    """Run both ops on small random problems and compare with dense torch; raise on a mismatch."""
    gen = torch.Generator().manual_seed(0)
    p = Pattern(2, 4, 16)
    w = torch.randn(20, 12, 3, 3, generator=gen)
    groups = torch.rand(20, 3, 3, 3, 4, generator=gen).argsort(-1) < 2  # 2 of every 4 input channels
    mask = groups.reshape(20, 3, 3, 12).permute(0, 3, 1, 2)
    packed = PackedHybridWeight.from_compact(HybridSparseTensor.from_dense(w, mask, p))
    x = torch.randn(2, 12, 9, 11, generator=gen)
    bias = torch.randn(20, generator=gen)
    channel = ChannelPackedWeight.from_compact(HybridSparseTensor.from_dense(w, mask, p), 12)
    for stride, pad, dil in ((1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 0, 1)):
        want = torch.relu(torch.nn.functional.conv2d(x, w * mask, bias, stride, pad, dil))
        got = [conv2d(x, packed, bias, (3, 3), stride, pad, dil, relu=True)]
        if channel_kernel_available():
            got.append(conv2d(x, channel, bias, (3, 3), stride, pad, dil, relu=True))
        for g in got:
            if not torch.allclose(g, want, rtol=1e-4, atol=1e-4):
                raise RuntimeError(f"conv self-check failed (stride {stride}, padding {pad}, dilation {dil})")
    lw = torch.randn(24, 32, generator=gen)
    lmask = (torch.rand(24, 8, 4, generator=gen).argsort(-1) < 2).reshape(24, 32)
    lpacked = PackedHybridWeight.from_compact(HybridSparseTensor.from_dense(lw, lmask, p))
    for rows in (3, 40):
        xl = torch.randn(rows, 32, generator=gen)
        if not torch.allclose(linear(xl, lpacked, None), xl @ (lw * lmask).T, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"linear self-check failed ({rows} rows)")


def available() -> bool:
    """Whether the fast kernels are built, loaded and correct here. The first call builds them
    (tens of seconds once per machine); on failure it warns once and returns False."""
    if _State.checked:
        return _State.ok
    with _State.lock:
        if not _State.checked:
            try:
                if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
                    raise RuntimeError(f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
                if not hasattr(torch.ops.crisp, "hybrid_sparse_conv2d_fast"):
                    _State.library = _build_and_load()
                    _register_fakes()
                _State.ok = True  # the self-check calls the ops through the wrappers
                _self_check()
            except Exception as exc:  # noqa: BLE001 - any failure means: use the reference kernel
                _State.ok = False
                _State.reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            _State.checked = True
    if not _State.ok:
        warn_unavailable()
    return _State.ok


def unavailable_reason() -> str | None:
    return _State.reason


def warn_unavailable() -> None:
    """Emit the single fallback warning of this process (later calls are silent)."""
    if _State.warned:
        return
    _State.warned = True
    warnings.warn(
        "crisp: the fast CPU kernels are unavailable "
        f"({_State.reason}); target 'cpu' runs the reference kernel instead, which gives the same "
        f"results more slowly. Check that a C++ compiler (g++) works, or clear {cache_dir() / 'extensions'} "
        "and retry.",
        FastKernelUnavailableWarning,
        stacklevel=3,
    )


def _reset_for_tests() -> None:
    """Forget the availability verdict (the loaded library, if any, stays loaded)."""
    with _State.lock:
        _State.checked = False
        _State.ok = False
        _State.reason = None
        _State.warned = False


# ---------------------------------------------------------------------------- calls
INF = float("inf")


def size_pair(v: Sequence[int] | int) -> list[int]:
    """A conv/pool size argument (one int or a pair) as the two-int list the ops take."""
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def clamp_bounds(relu: bool = False, clamp_max: float | None = None) -> tuple[float, float]:
    """The (clamp_min, clamp_max) the ops take: ReLU is (0, inf), ReLU6 is (0, 6), none is (-inf, inf)."""
    return (0.0 if relu else -INF), (INF if clamp_max is None else float(clamp_max))


def channel_kernel_available() -> bool:
    """Whether the channel-vector (NHWC, AVX-512) kernel was built here; needs :func:`available`."""
    return bool(torch.ops.crisp.channel_kernel_available())


def conv2d(
    x: torch.Tensor,
    weight: PackedHybridWeight | ChannelPackedWeight,
    bias: Optional[torch.Tensor] = None,
    kernel_size: Sequence[int] | int = 1,
    stride: Sequence[int] | int = 1,
    padding: Sequence[int] | int = 0,
    dilation: Sequence[int] | int = 1,
    *,
    relu: bool = False,
    clamp_max: float | None = None,
    residual: Optional[torch.Tensor] = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """``clamp(conv2d(x, W) + bias + residual)`` with a packed hybrid-sparse weight (groups=1);
    ``relu=True`` clamps below at 0, ``clamp_max`` above (6 for ReLU6). A
    :class:`ChannelPackedWeight` always returns a channels_last tensor; a
    :class:`PackedHybridWeight` does when ``channels_last`` is set."""

    lo, hi = clamp_bounds(relu, clamp_max)
    geometry = (size_pair(kernel_size), size_pair(stride), size_pair(padding), size_pair(dilation), lo, hi)
    if isinstance(weight, ChannelPackedWeight):
        return torch.ops.crisp.hybrid_sparse_conv2d_nhwc(
            x, weight.vals, weight.idx, weight.gtap, weight.gcin, weight.rows, weight.n, weight.m, bias, residual, *geometry
        )
    return torch.ops.crisp.hybrid_sparse_conv2d_fast(
        x, weight.row_ptr, weight.cols, weight.vals, weight.in_features, bias, residual, *geometry, channels_last
    )


def linear(
    x: torch.Tensor, weight: PackedHybridWeight, bias: Optional[torch.Tensor] = None, *, relu: bool = False,
    clamp_max: float | None = None,
) -> torch.Tensor:
    """``clamp(x @ G.T + bias)`` with the packed hybrid-sparse weight."""
    lo, hi = clamp_bounds(relu, clamp_max)
    return torch.ops.crisp.hybrid_sparse_linear_fast(x, weight.row_ptr, weight.cols, weight.vals, weight.in_features, bias, lo, hi)


def max_pool2d(x: torch.Tensor, kernel_size: Sequence[int] | int, stride: Sequence[int] | int | None = None,
               padding: Sequence[int] | int = 0) -> torch.Tensor:
    """``F.max_pool2d`` (dilation 1, floor mode) on the kernels' threads; returns channels_last."""

    return torch.ops.crisp.max_pool2d_nhwc(x, size_pair(kernel_size), size_pair(kernel_size if stride is None else stride),
                                           size_pair(padding))


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, 1)`` on the kernels' threads."""
    return torch.ops.crisp.global_avg_pool_nhwc(x)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: Sequence[int] | int = 1, padding: Sequence[int] | int = 0,
                     dilation: Sequence[int] | int = 1, *, relu: bool = False,
                     clamp_max: float | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)`` for a depthwise
    ``weight`` of shape ``[C, 1, kh, kw]``, on the kernels' threads; returns channels_last."""

    c, _, kh, kw = weight.shape
    taps = weight.detach().reshape(c, kh * kw).t().contiguous().to(torch.float32)
    lo, hi = clamp_bounds(relu, clamp_max)
    return torch.ops.crisp.depthwise_conv2d_nhwc(x, taps, bias, [kh, kw], size_pair(stride), size_pair(padding), size_pair(dilation),
                                                 lo, hi)
