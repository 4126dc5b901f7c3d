"""The fused 1x1 expansion + depthwise kernel (``crisp::expand_depthwise_nhwc``, built with the other
fast kernels by :mod:`crisp.runtime.fast_kernel`) called with a packed expansion weight and a
depthwise conv's weight, as tests and benchmarks call it; the cpu pass
:class:`~crisp.passes.FuseExpandDepthwise` puts the op itself in the graph."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from crisp.errors import ArgumentError
from crisp.runtime.fast_kernel import INF, ops, size_pair
from crisp.runtime.packed_weight import GemmPackedWeight


def expand_depthwise_conv2d(x: torch.Tensor, expand: GemmPackedWeight, expand_bias: Optional[torch.Tensor],
                            weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                            stride: Sequence[int] | int = 1, padding: Sequence[int] | int = 0,
                            dilation: Sequence[int] | int = 1, *, expand_clamp: tuple[float, float] = (-INF, INF),
                            clamp: tuple[float, float] = (-INF, INF), capability: str | None = None) -> torch.Tensor:
    """``clamp(depthwise(clamp(conv1x1(x) + expand_bias, *expand_clamp), weight, bias))`` in one pass:
    ``expand`` is a 1x1 conv's packed weight, ``weight`` the depthwise conv's ``[C, 1, kh, kw]``;
    a clamp is (min, max), ReLU6 (0, 6). Returns channels_last."""
    if list(expand.weight_shape[2:]) != [1, 1]:
        raise ArgumentError(f"the expansion must be a 1x1 conv, not {list(expand.weight_shape)}")
    c, _, kh, kw = weight.shape
    if c != expand.rows:
        raise ArgumentError(f"the depthwise conv has {c} channels but the expansion makes {expand.rows}")
    taps = weight.detach().reshape(c, kh * kw).t().contiguous().to(torch.float32)
    return ops(capability).expand_depthwise_nhwc(x, expand.panels, expand.rows, expand_bias, *expand_clamp, taps, bias,
                                                 [kh, kw], size_pair(stride), size_pair(padding), size_pair(dilation),
                                                 *clamp)
