"""The dense path of the cpu target: torch's own conv / linear (oneDNN) on a layer's whole weight,
with the epilogue the fast kernels fuse (bias, residual add, clamp) applied in place.

Between crisp's layers torch's op runs on one intra-op thread (the calling thread). With two
thread pools in one model, torch's OpenMP worker keeps spinning on the other core after its op
(libgomp's default wait policy) while crisp's next layer wants that core for its own helper: on
MobileNetV2 at 2 threads (2-vCPU AMD EPYC) crisp's helper then joined 7 of 43 layers, against 38
of 43 with torch's op kept on one thread, and the model ran 1.8x faster (29.5 -> 16.8 ms median).
The kernel choice times the dense candidate through these same functions, so it picks torch's op
only where it wins on one thread.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F

from crisp.ir.conv_geometry import conv_out_size, pair


class _OneThread:
    """Run the enclosed torch op on the calling thread only (see the module docstring)."""

    __slots__ = ("threads",)

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        if self.threads > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        if self.threads > 1:
            torch.set_num_threads(self.threads)


def _epilogue(y: torch.Tensor, residual: Optional[torch.Tensor], clamp_min: float, clamp_max: float) -> torch.Tensor:
    if residual is not None:
        y = y.add_(residual)
    if clamp_min > -math.inf or clamp_max < math.inf:
        y = y.clamp_(None if clamp_min == -math.inf else clamp_min, None if clamp_max == math.inf else clamp_max)
    return y


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
           stride: list[int], padding: list[int], dilation: list[int], clamp_min: float, clamp_max: float) -> torch.Tensor:
    """``clamp(conv2d(x, weight, bias) + residual)``, groups=1; channels-last in and out."""
    kernel, stride, padding = tuple(weight.shape[2:]), _pair(stride), _pair(padding)
    dilation = unit_dilation_where_kernel_is_one(kernel, dilation)
    with _OneThread():
        if reads_only_padding(tuple(x.shape[2:]), kernel, stride, padding, dilation):
            y = F.conv2d(x.contiguous(), weight, bias, stride, padding, dilation).contiguous(memory_format=torch.channels_last)
        else:
            y = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias, stride, padding, dilation)
        return _epilogue(y, residual, clamp_min, clamp_max)


# torch's oneDNN conv can crash the process (SIGSEGV) on channels-last inputs where output positions
# see only padding (a size-1 input axis with padding; pytorch/pytorch#195394 is a relative), for
# instance input width 1, kernel width 1, padding 2, dilation 2, stride 3 with a bias (torch 2.13 and
# 2.14). The dense path avoids both triggers: dilation 1 where the kernel is 1 wide (the same conv),
# and the contiguous layout where some output reads only padding (rare: no common CNN layer does).
def unit_dilation_where_kernel_is_one(kernel_size, dilation) -> tuple[int, int]:
    """The same conv with dilation 1 on every axis whose kernel size is 1 (where dilation does nothing)."""
    return tuple(1 if k == 1 else d for k, d in zip(_pair(kernel_size), _pair(dilation)))


@functools.lru_cache(maxsize=1024)
def reads_only_padding(size: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> bool:
    """Whether some output position of the conv has every tap in the zero padding, on either axis."""
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        for o in range(max(0, conv_out_size(n, k, s, d, p))):
            if not any(p <= o * s + j * d < p + n for j in range(k)):
                return True
    return False


def _pair(v) -> tuple[int, int]:
    """A conv argument as the kernels take it (an int, or 1 or 2 numbers) as two ints."""
    return pair(v[0] if not isinstance(v, int) and len(v) == 1 else v)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], clamp_min: float,
           clamp_max: float) -> torch.Tensor:
    """``clamp(x @ weight.T + bias)``."""
    with _OneThread():
        return _epilogue(F.linear(x, weight, bias), None, clamp_min, clamp_max)
