"""What crisp needs from ``torch.distributed``: detect a process group, all-reduce sums so that
every rank ends up with the same saliency (and so the same masks), and wrap a model in
DistributedDataParallel for fine-tuning. Without an initialized process group every function
is the single-process identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (in place; returned for convenience)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_sums(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum several tensors over all ranks with one collective (flattened into one buffer)."""
    if not is_distributed() or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, at = [], 0
    for t in tensors:
        out.append(flat[at: at + t.numel()].reshape(t.shape).to(t.dtype))
        at += t.numel()
    return out


def broadcast_masks(masks: dict[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Make every rank hold rank ``src``'s masks (a guard; all-reduced saliency already agrees)."""
    if not is_distributed():
        return masks
    out = {}
    for name in sorted(masks):
        t = masks[name].to(torch.uint8).contiguous()
        dist.broadcast(t, src)
        out[name] = t.bool()
    return {name: out[name] for name in masks}


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s floating-point buffers (BatchNorm statistics): DDP syncs them
    at the start of each forward, so after the last training step they may still differ."""
    if not is_distributed():
        return
    for _, buf in sorted(model.named_buffers(), key=lambda item: item[0]):
        if buf.dtype.is_floating_point:
            dist.broadcast(buf, src)


def wrap_for_training(model: nn.Module) -> nn.Module:
    """DistributedDataParallel around ``model`` under a process group, else ``model`` itself."""
    if not is_distributed():
        return model
    return nn.parallel.DistributedDataParallel(model)
