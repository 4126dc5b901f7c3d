"""A Linear layer on the channel kernel (``crisp::hybrid_sparse_conv2d_nhwc``): its ``[..., K]`` input
is read in place as one channels-last image, 1 row of M pixels (M = the rows of the input, every
leading dim merged) of K channels, and the layer is that image's 1x1 conv. So the kernel's register
tiles of 8 positions share each weight load among 8 input rows, and a batch-1 layer splits its
output channels between the threads. The output ``[1, O, 1, M]`` channels-last is ``[M, O]`` in
memory, returned as ``[..., O]`` without a copy."""

from __future__ import annotations

from typing import Optional

import torch

from crisp.errors import ArgumentError
from crisp.runtime.fast_kernel import clamp_bounds, cpu_capability, ops
from crisp.runtime.packed_weight import ChannelPackedWeight


def channel_linear_call(x: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, gtap: torch.Tensor, gcin: torch.Tensor,
                        rows: int, n: int, m: int, bias: Optional[torch.Tensor], clamp_min: float, clamp_max: float,
                        capability: str) -> torch.Tensor:
    """``clamp(x @ W.T + bias)`` for a :class:`ChannelPackedWeight`'s tensors: the compiled graph's call."""
    k = x.shape[-1]
    lead = x.shape[:-1]
    flat = x.reshape(-1, k)
    if flat.shape[0] == 0:
        return x.new_empty(*lead, rows)
    if flat.stride(-1) != 1 or (flat.shape[0] > 1 and flat.stride(0) != k):
        flat = flat.contiguous()
    image = flat.t().unsqueeze(0).unsqueeze(2)  # [1, K, 1, M], channels-last: pixel j is row j of x
    y = ops(capability).hybrid_sparse_conv2d_nhwc(image, vals, idx, gtap, gcin, rows, n, m, bias, None, [1, 1], [1, 1],
                                                  [0, 0], [1, 1], clamp_min, clamp_max)
    return y.permute(0, 2, 3, 1).reshape(*lead, rows)


def channel_linear(x: torch.Tensor, weight: ChannelPackedWeight, bias: Optional[torch.Tensor] = None, *,
                   relu: bool = False, clamp_max: float | None = None, capability: str | None = None) -> torch.Tensor:
    """``clamp(x @ W.T + bias)`` with a Linear weight packed for the channel kernel
    (``ChannelPackedWeight.from_compact(compact, in_features)``); ``capability`` picks the ISA path."""
    if len(weight.weight_shape) != 2 or weight.in_channels != weight.weight_shape[1]:
        raise ArgumentError(f"a packed {list(weight.weight_shape)} weight with {weight.in_channels} channels per tap "
                            "is not a Linear layer's; pack it with in_channels = in_features")
    if x.shape[-1:] != (weight.in_channels,):
        raise ArgumentError(f"the Linear layer takes {weight.in_channels} input features, got an input of shape "
                            f"{list(x.shape)}")
    lo, hi = clamp_bounds(relu, clamp_max)
    return channel_linear_call(x, weight.vals, weight.idx, weight.gtap, weight.gcin, weight.rows, weight.n, weight.m,
                               bias, lo, hi, capability or cpu_capability())
