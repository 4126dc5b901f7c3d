"""The fast CPU kernels: build (once per ISA path, cached), load, self-check, and call them.

``runtime/csrc/hybrid_sparse_cpu.cpp`` is compiled with ``torch.utils.cpp_extension`` once per ISA
path (:mod:`crisp.runtime.cpu_capability`: ``avx512``, ``avx2`` or the portable ``default``; each
with its own ``-march`` and op namespace ``crisp_<path>``, so every build can live in one process)
and cached under ``$CRISP_CACHE_DIR`` (default ``$XDG_CACHE_HOME/crisp`` or ``~/.cache/crisp``),
keyed by the sources, the torch version, the flags and the CPU's feature flags. Only paths the CPU
runs are ever loaded; the active one is the best, or ``CRISP_CPU_CAPABILITY``'s
(:func:`cpu_capability`). Each build registers, in its namespace:

- ``hybrid_sparse_conv2d_fast(x, row_ptr, cols, vals, in_features, bias, residual,
  kernel_size, stride, padding, dilation, clamp_min, clamp_max, channels_last)``: conv with a
  :class:`PackedHybridWeight` (vectorized over output positions, NCHW planes), fused bias, residual
  add and clamp (ReLU is [0, inf), ReLU6 [0, 6]);
- ``hybrid_sparse_conv2d_nhwc(x, vals, idx, gtap, gcin, rows, n, m, bias, residual,
  kernel_size, stride, padding, dilation, clamp_min, clamp_max)``: the same with a
  :class:`ChannelPackedWeight` (vectorized over output channels, channels-last in and out; N:M
  groups of at most :func:`channel_max_m` inputs);
- ``hybrid_sparse_linear_fast(x, row_ptr, cols, vals, in_features, bias, clamp_min, clamp_max)``;
- ``channel_kernel_available()``, ``isa_name()``, ``channel_max_m()``: what the build holds;
- ``max_pool2d_nhwc(x, kernel_size, stride, padding)``, ``global_avg_pool_nhwc(x)``: the pools, on the kernels' threads;
- ``depthwise_conv2d_nhwc(x, weight [kh*kw, C], bias, kernel_size, stride, padding, dilation,
  clamp_min, clamp_max)``: the dense depthwise convs (MobileNetV2), bias and clamp fused, and
  ``expand_depthwise_nhwc``: a 1x1 conv with the depthwise conv it feeds (:mod:`crisp.runtime.expand_depthwise`).

If a path's build or self-check fails, the next path the CPU runs takes its place; if none works
(no compiler, a wrong result), :func:`available` returns False after ONE
:class:`FastKernelUnavailableWarning`; callers then run the reference kernel (the ``cpu`` backend
keeps the reference graph). Setting ``CRISP_DISABLE_FAST_KERNEL=1`` forces that fallback.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from crisp.errors import ArgumentError
from crisp.ir.conv_geometry import conv_out_size
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern
from crisp.runtime import cpu_capability as isa
from crisp.runtime.packed_weight import ChannelPackedWeight, GemmPackedWeight, PackedHybridWeight

CSRC = Path(__file__).parent / "csrc"
SOURCE = CSRC / "hybrid_sparse_cpu.cpp"
LDFLAGS = ("-fopenmp",)
DISABLE_ENV = "CRISP_DISABLE_FAST_KERNEL"


class FastKernelUnavailableWarning(RuntimeWarning):
    """The fast CPU kernels could not be used; crisp runs the (slow, correct) reference kernel."""


class _State:
    lock = threading.Lock()
    checked: dict[str, bool] = {}  # per ISA path: built, loaded and self-checked (or failed)
    ok: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    reason: str | None = None  # why no path works (None while one does)
    warned = False
    libraries: dict[str, str] = {}


def cache_dir() -> Path:
    """Where built kernels are kept: ``$CRISP_CACHE_DIR``, else ``$XDG_CACHE_HOME/crisp``, else ``~/.cache/crisp``."""
    if os.environ.get("CRISP_CACHE_DIR"):
        return Path(os.environ["CRISP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crisp"


def build_key(capability: str) -> str:
    """The sources, torch version, flags, machine and CPU features one path's build depends on."""
    h = hashlib.sha256()
    parts = [f.read_bytes() for f in sorted(CSRC.glob("*.[ch]*"))]
    parts += [torch.__version__.encode(), " ".join(isa.compile_flags(capability) + LDFLAGS).encode(),
              platform.machine().encode(), " ".join(sorted(isa.cpu_flags())).encode()]
    for part in parts:
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


STALE_LOCK_S = 15 * 60  # no build of the kernels takes this long; an older lock was left by a killed build


def _clear_stale_build_lock(directory: Path) -> None:
    """Remove the build lock a killed build left behind; torch would otherwise wait on it forever."""
    lock = directory / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        warnings.warn(f"crisp: removing the stale kernel build lock {lock} ({age / 60:.0f} min old, "
                      "left by a build that was killed)", stacklevel=3)
        lock.unlink(missing_ok=True)


def _build_and_load(capability: str) -> str:
    """Compile (or reuse) one path's extension and load it into this process; returns the library path."""
    from torch.utils import cpp_extension

    name = f"crisp_cpu_{capability}_{build_key(capability)}"
    directory = cache_dir() / "extensions" / name
    directory.mkdir(parents=True, exist_ok=True)
    _clear_stale_build_lock(directory)
    return cpp_extension.load(
        name=name,
        sources=[str(SOURCE)],
        extra_cflags=list(isa.compile_flags(capability)),
        extra_ldflags=list(LDFLAGS),
        build_directory=str(directory),
        is_python_module=False,
        verbose=False,
    )


def ops(capability: str | None = None):
    """The op namespace of one path's build (``torch.ops.crisp_avx2``, ...); the active path by default."""
    return getattr(torch.ops, f"crisp_{capability or cpu_capability()}")


def op(name: str, capability: str | None = None):
    """The op overload a lowered graph calls (``node.target``) for ``name`` on the active path."""
    return getattr(ops(capability), name).default


def cpu_capability() -> str:
    """The ISA path the kernels run on here: ``avx512``, ``avx2`` or ``default`` (portable); the
    best the CPU runs unless ``CRISP_CPU_CAPABILITY`` forces another; a path whose build failed
    gives way to the next one. Call :func:`available` first to know that it works."""
    asked = isa.active()
    paths = isa.supported()
    for cap in paths[paths.index(asked):]:
        if _State.ok.get(cap, True):
            return cap
    return asked


def _conv_out_shape(x, rows, kernel_size, stride, padding, dilation) -> tuple:
    """``(N, rows, OH, OW)`` of a conv/pool op on NCHW ``x``; each size argument holds one number or two."""
    def axis(v, i):
        return v[0] if len(v) == 1 else v[i]

    n, _, h, w = x.shape
    return (n, rows, *(conv_out_size(size, axis(kernel_size, i), axis(stride, i), axis(dilation, i), axis(padding, i))
                       for i, size in enumerate((h, w))))


def _register_fakes(ns: str) -> None:
    @torch.library.register_fake(f"{ns}::hybrid_sparse_conv2d_fast")
    def _(x, row_ptr, cols, vals, in_features, bias, residual, kernel_size, stride, padding, dilation, clamp_min,
          clamp_max, channels_last):
        out = x.new_empty(_conv_out_shape(x, row_ptr.shape[0] - 1, kernel_size, stride, padding, dilation))
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    @torch.library.register_fake(f"{ns}::hybrid_sparse_conv2d_nhwc")
    def _(x, vals, idx, gtap, gcin, rows, n, m, bias, residual, kernel_size, stride, padding, dilation, clamp_min,
          clamp_max):
        out = x.new_empty(_conv_out_shape(x, rows, kernel_size, stride, padding, dilation))
        return out.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake(f"{ns}::dense_conv2d_nhwc")
    def _(x, panels, rows, bias, residual, kernel_size, stride, padding, dilation, clamp_min, clamp_max):
        out = x.new_empty(_conv_out_shape(x, rows, kernel_size, stride, padding, dilation))
        return out.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake(f"{ns}::expand_depthwise_nhwc")
    def _(x, panels, rows, expand_bias, expand_min, expand_max, weight, bias, kernel_size, stride, padding, dilation, *_):
        return x.new_empty(_conv_out_shape(x, rows, kernel_size, stride, padding, dilation), memory_format=torch.channels_last)

    @torch.library.register_fake(f"{ns}::max_pool2d_nhwc")
    def _(x, kernel_size, stride, padding):
        out = x.new_empty(_conv_out_shape(x, x.shape[1], kernel_size, stride, padding, [1]))  # floor mode
        return out.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake(f"{ns}::depthwise_conv2d_nhwc")
    def _(x, weight, bias, kernel_size, stride, padding, dilation, clamp_min, clamp_max):
        out = x.new_empty(_conv_out_shape(x, x.shape[1], kernel_size, stride, padding, dilation))
        return out.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake(f"{ns}::global_avg_pool_nhwc")
    def _(x):
        return x.new_empty((x.shape[0], x.shape[1], 1, 1))

    @torch.library.register_fake(f"{ns}::hybrid_sparse_linear_fast")
    def _(x, row_ptr, cols, vals, in_features, bias, clamp_min, clamp_max):
        return x.new_empty((*x.shape[:-1], row_ptr.shape[0] - 1))


def _self_check(capability: str) -> None:
    """Run one path's ops on small random problems and compare with dense torch; raise on a mismatch."""
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
        for weight in (packed, channel):
            got = conv2d(x, weight, bias, (3, 3), stride, pad, dil, relu=True, capability=capability)
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                raise RuntimeError(f"conv self-check failed on the {capability} path (stride {stride}, padding {pad}, "
                                   f"dilation {dil})")
    lw = torch.randn(24, 32, generator=gen)
    lmask = (torch.rand(24, 8, 4, generator=gen).argsort(-1) < 2).reshape(24, 32)
    lpacked = PackedHybridWeight.from_compact(HybridSparseTensor.from_dense(lw, lmask, p))
    for rows in (3, 40):
        xl = torch.randn(rows, 32, generator=gen)
        if not torch.allclose(linear(xl, lpacked, None, capability=capability), xl @ (lw * lmask).T, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"linear self-check failed on the {capability} path ({rows} rows)")


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"


def _check_path(capability: str) -> bool:
    """Build, load and self-check one path (once per process); True if it works."""
    if capability not in _State.checked:
        try:
            ns = f"crisp_{capability}"
            if not hasattr(getattr(torch.ops, ns), "hybrid_sparse_conv2d_fast"):
                _State.libraries[capability] = _build_and_load(capability)
                _register_fakes(ns)
            got = ops(capability).isa_name()
            if got != capability:
                raise RuntimeError(f"the {capability} build reports ISA {got!r}")
            _self_check(capability)
            _State.ok[capability] = True
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next path, at last the reference kernel
            _State.ok[capability] = False
            _State.reasons[capability] = _short(exc)
        _State.checked[capability] = True
    return _State.ok[capability]


def available(capability: str | None = None) -> bool:
    """Whether the fast kernels of the active path (or of ``capability``) are built, loaded and
    correct here. The first call per path builds it (tens of seconds once per machine). If the
    active path fails, the next one the CPU runs takes its place; if none works, it warns once
    and returns False (callers run the reference kernel)."""
    with _State.lock:
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            _State.reason = f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
            ok = False
        elif capability is not None:
            return capability in isa.supported() and _check_path(capability)
        else:
            asked = isa.active()
            paths = isa.supported()
            ok = any(_check_path(cap) for cap in paths[paths.index(asked):])
            _State.reason = None if ok else _State.reasons.get(asked)
    if not ok:
        warn_unavailable()
    return ok


def unavailable_reason(capability: str | None = None) -> str | None:
    """Why the fast kernels (or one path's build) cannot be used; None if they can."""
    if capability is not None:
        return _State.reasons.get(capability) if capability in isa.supported() else \
            f"this CPU ({isa.cpu_model()}) cannot run the {capability} path"
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
    """Forget the availability verdicts (the loaded libraries stay loaded)."""
    with _State.lock:
        _State.checked.clear()
        _State.ok.clear()
        _State.reasons.clear()
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


def channel_kernel_available(capability: str | None = None) -> bool:
    """Whether the channel-vector (NHWC) kernel was built for the path; needs :func:`available`."""
    return bool(ops(capability).channel_kernel_available())


def channel_max_m(capability: str | None = None) -> int:
    """The largest N:M group (m) the path's channel kernel picks from: its vector lanes (16 or 8)."""
    return int(ops(capability).channel_max_m())


def conv2d(
    x: torch.Tensor,
    weight: PackedHybridWeight | ChannelPackedWeight | GemmPackedWeight,
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
    capability: str | None = None,
) -> torch.Tensor:
    """``clamp(conv2d(x, W) + bias + residual)`` with a packed hybrid-sparse weight (groups=1);
    ``relu=True`` clamps below at 0, ``clamp_max`` above (6 for ReLU6). A
    :class:`ChannelPackedWeight` always returns a channels_last tensor; a
    :class:`PackedHybridWeight` does when ``channels_last`` is set. A :class:`GemmPackedWeight`
    (every weight kept) runs crisp's dense GEMM kernel and returns channels_last.
    ``capability`` picks the ISA path (the active one by default)."""

    lo, hi = clamp_bounds(relu, clamp_max)
    geometry = (size_pair(kernel_size), size_pair(stride), size_pair(padding), size_pair(dilation), lo, hi)
    if isinstance(weight, GemmPackedWeight):
        if list(weight.weight_shape[2:]) != geometry[0]:
            raise ArgumentError(f"the packed dense weight {list(weight.weight_shape)} is not a {geometry[0]} conv kernel")
        return ops(capability).dense_conv2d_nhwc(x, weight.panels, weight.rows, bias, residual, *geometry)
    if isinstance(weight, ChannelPackedWeight):
        return ops(capability).hybrid_sparse_conv2d_nhwc(
            x, weight.vals, weight.idx, weight.gtap, weight.gcin, weight.rows, weight.n, weight.m, bias, residual, *geometry
        )
    return ops(capability).hybrid_sparse_conv2d_fast(
        x, weight.row_ptr, weight.cols, weight.vals, weight.in_features, bias, residual, *geometry, channels_last
    )


def linear(
    x: torch.Tensor, weight: PackedHybridWeight, bias: Optional[torch.Tensor] = None, *, relu: bool = False,
    clamp_max: float | None = None, capability: str | None = None,
) -> torch.Tensor:
    """``clamp(x @ G.T + bias)`` with the packed hybrid-sparse weight."""
    lo, hi = clamp_bounds(relu, clamp_max)
    return ops(capability).hybrid_sparse_linear_fast(x, weight.row_ptr, weight.cols, weight.vals, weight.in_features, bias, lo, hi)


def max_pool2d(x: torch.Tensor, kernel_size: Sequence[int] | int, stride: Sequence[int] | int | None = None,
               padding: Sequence[int] | int = 0, capability: str | None = None) -> torch.Tensor:
    """``F.max_pool2d`` (dilation 1, floor mode) on the kernels' threads; returns channels_last."""

    return ops(capability).max_pool2d_nhwc(x, size_pair(kernel_size), size_pair(kernel_size if stride is None else stride),
                                           size_pair(padding))


def global_avg_pool(x: torch.Tensor, capability: str | None = None) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, 1)`` on the kernels' threads."""
    return ops(capability).global_avg_pool_nhwc(x)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: Sequence[int] | int = 1, padding: Sequence[int] | int = 0,
                     dilation: Sequence[int] | int = 1, *, relu: bool = False,
                     clamp_max: float | None = None, capability: str | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)`` for a depthwise
    ``weight`` of shape ``[C, 1, kh, kw]``, on the kernels' threads; returns channels_last."""

    c, _, kh, kw = weight.shape
    taps = weight.detach().reshape(c, kh * kw).t().contiguous().to(torch.float32)
    lo, hi = clamp_bounds(relu, clamp_max)
    return ops(capability).depthwise_conv2d_nhwc(x, taps, bias, [kh, kw], size_pair(stride), size_pair(padding), size_pair(dilation),
                                                 lo, hi)
