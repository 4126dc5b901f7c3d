"""Learned N:M masks (the companion paper, "semi-structured sparsity by masking"), combinable
with CRISP's block selection.

The weights stay frozen. Every group of ``m`` consecutive reduction entries of the GEMM view
(the same groups the hybrid format uses) owns logits over the ``C(m, n)`` patterns that keep
``n`` of them (6 for 2:4). Training samples one pattern per group with a hard Gumbel-softmax
(temperature 1, straight-through); evaluation takes the argmax pattern, never a fresh sample.
The layer computes ``W * (block_mask * nm_mask)``; the weight still receives the dense
(straight-through) gradient so Taylor saliency can score blocks, but it is not optimized.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from crisp.sparsity.gemm_view import as_blocks, gemm_shape, gemm_to_weight, pad_to_blocks, weight_to_gemm
from crisp.sparsity.pattern import Pattern
from crisp.pruning.ste import owner


def nm_patterns(n: int, m: int) -> torch.Tensor:
    """All ``C(m, n)`` ways to keep ``n`` of ``m`` entries, as a bool ``[C(m,n), m]`` matrix."""
    rows = []
    for keep in itertools.combinations(range(m), n):
        row = [False] * m
        for k in keep:
            row[k] = True
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


class _ProductSTE(torch.autograd.Function):
    """``w * mask``: dense (straight-through) gradient to ``w``, exact gradient to ``mask``."""

    @staticmethod
    def forward(ctx, weight, mask):  # type: ignore[override]
        ctx.save_for_backward(weight)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return grad, grad * weight


def _groups(gemm: torch.Tensor, m: int) -> torch.Tensor:
    """``[rows, K]`` -> ``[rows, ceil(K/m), m]``, zero-padded along K."""
    rows, k = gemm.shape
    pad = (-k) % m
    if pad:
        gemm = F.pad(gemm, (0, pad))
    return gemm.reshape(rows, -1, m)


class LearnedNMMask(nn.Module):
    """Parametrization ``W -> W * block_mask * nm_mask(logits)``."""

    def __init__(self, weight: torch.Tensor, pattern: Pattern, saliency: torch.Tensor | None = None, init_scale: float = 10.0):
        super().__init__()
        self.pattern = pattern
        self.weight_shape = tuple(weight.shape)
        self.register_buffer("patterns", nm_patterns(pattern.n, pattern.m))
        self.register_buffer("block_mask", torch.ones(self.weight_shape, dtype=torch.bool))
        score_src = (weight.detach().abs() if saliency is None else saliency.detach().abs()).to(torch.float32)
        groups = _groups(weight_to_gemm(score_src), pattern.m)  # [rows, G, m]
        scores = groups @ self.patterns.T.to(torch.float32)  # kept saliency of each pattern
        scores = scores / scores.amax(-1, keepdim=True).clamp_min(1e-30)
        self.logits = nn.Parameter(init_scale * scores)

    def _nm_gemm(self, z: torch.Tensor) -> torch.Tensor:
        rows, k = gemm_shape(self.weight_shape)
        mask = (z @ self.patterns.to(z.dtype)).reshape(rows, -1)[:, :k]
        return mask

    def nm_mask(self) -> torch.Tensor:
        """The argmax N:M mask (bool, weight shape), without the block mask."""
        z = F.one_hot(self.logits.detach().argmax(-1), self.patterns.shape[0]).to(torch.float32)
        return gemm_to_weight(self._nm_gemm(z), self.weight_shape).bool()

    def hard_mask(self) -> torch.Tensor:
        """The evaluation mask: argmax pattern of every group, inside the kept blocks."""
        return self.nm_mask() & self.block_mask

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            z = F.gumbel_softmax(self.logits, tau=1.0, hard=True)
        else:
            z = F.one_hot(self.logits.argmax(-1), self.patterns.shape[0]).to(weight.dtype)
        mask = gemm_to_weight(self._nm_gemm(z), self.weight_shape) * self.block_mask.to(weight.dtype)
        return _ProductSTE.apply(weight, mask)


class LearnedMasking:
    """Learned N:M masks on the named weights of ``model`` (registered in place)."""

    def __init__(self, model: nn.Module, names: list[str], pattern: Pattern,
                 saliency: dict[str, torch.Tensor] | None = None, init_scale: float = 10.0):
        self.model = model
        self.names = list(names)
        self.pattern = pattern
        self.layers: dict[str, LearnedNMMask] = {}
        for name in self.names:
            module, attr = owner(model, name)
            weight = getattr(module, attr)
            weight.requires_grad_(True)  # gradients still flow (Taylor saliency); not optimized
            layer = LearnedNMMask(weight, pattern, None if saliency is None else saliency[name], init_scale)
            parametrize.register_parametrization(module, attr, layer, unsafe=True)
            self.layers[name] = layer

    def parameters(self) -> list[nn.Parameter]:
        return [layer.logits for layer in self.layers.values()]

    def set_block_masks(self, masks: dict[str, torch.Tensor]) -> None:
        for name, mask in masks.items():
            self.layers[name].block_mask.copy_(mask.to(torch.bool))

    def nm_masks(self) -> dict[str, torch.Tensor]:
        return {n: layer.nm_mask() for n, layer in self.layers.items()}

    def hard_masks(self) -> dict[str, torch.Tensor]:
        return {n: layer.hard_mask() for n, layer in self.layers.items()}

    def bake(self) -> dict[str, torch.Tensor]:
        """Remove the parametrizations, leaving ``W * hard_mask``; returns the masks."""
        masks = self.hard_masks()
        for name, mask in masks.items():
            module, attr = owner(self.model, name)
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            with torch.no_grad():
                getattr(module, attr).mul_(mask.to(getattr(module, attr).dtype))
        return masks


def restrict_to_choice(saliency: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Saliency in which exactly the chosen entries win every N:M group (float64).

    Chosen entries keep their saliency plus a tiny positive amount; the others become 0, so the
    hybrid selection's N:M step reproduces the learned choice and scores blocks with it.
    """
    s = saliency.detach().to(torch.float64).abs()
    return torch.where(choice, s + math.ldexp(1.0, -1000), torch.zeros((), dtype=torch.float64))


def block_keep_mask(mask: torch.Tensor, block: int) -> torch.Tensor:
    """Bool ``[rows, K]`` (GEMM view) that is True inside every block where ``mask`` keeps anything."""
    rows, k = mask.shape
    blocks = as_blocks(pad_to_blocks(mask, block, False), block).any(dim=(2, 3))  # [nbr, nbc]
    full = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return full[:rows, :k]
