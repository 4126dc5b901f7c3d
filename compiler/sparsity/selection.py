"""Hybrid mask selection (CRISP Alg. 1, lines 2-10), as pure functions on saliency tensors.

1. N:M: in each group of m along the reduction axis keep the n entries of largest saliency.
2. Block score = saliency kept by step 1 inside the block.
3. Sort block scores inside each block-row ascending; the column score of rank position ``o``
   is the sum over block-rows of their ``o``-th smallest score.
4. Rank the column scores of all layers together and prune the lowest until the sparsity
   comes closest to the target (ties: prune more): layer ``l`` drops the same number of blocks in every block-row, and each
   row drops its own lowest-scoring blocks (the mask is placed through the sort permutation,
   not by unsorted position as the public CRISP code does).
5. Every block-row keeps at least one block.

Saliency is given per layer in the GEMM view ``[rows, K]`` (see :mod:`crisp.sparsity.gemm_view`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crisp.errors import ModelError
from crisp.sparsity.gemm_view import as_blocks, from_blocks, pad_to_blocks
from crisp.sparsity.pattern import Pattern


@dataclass
class LayerSelection:
    """What selection decided for one layer."""

    mask: torch.Tensor  # bool [rows, K], GEMM view
    kept_blocks_per_row: int
    blocks_per_row: int
    kept_weights: int
    total_weights: int

    @property
    def density(self) -> float:
        return self.kept_weights / max(1, self.total_weights)


@dataclass
class SelectionResult:
    layers: dict[str, LayerSelection]
    target_sparsity: float
    achieved_sparsity: float


def nm_mask(saliency: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Step 1 on a block-padded ``[R, C]`` saliency (padding holds -inf so real entries win):
    keep the n largest of every m consecutive entries along the reduction axis."""
    rows, cols = saliency.shape
    groups = saliency.reshape(rows, cols // pattern.m, pattern.m)
    top = torch.topk(groups, pattern.n, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(rows, cols)


@dataclass
class _LayerScores:
    name: str
    rows: int
    cols: int
    nm: torch.Tensor  # bool, block-padded [nbr*B, nbc*B], real entries only
    order: torch.Tensor  # [nbr, nbc] block columns per row, ascending block score
    column_scores: torch.Tensor  # [nbc] sum over rows of the o-th smallest block score
    removal: torch.Tensor  # [nbc] real weights removed by dropping rank position o in every row


def _block_sums(matrix: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    """Sum a block-padded ``[nbr*B, nbc*B]`` matrix over each B x B block -> ``[nbr, nbc]``."""
    rows, cols = matrix.shape
    return matrix.view(rows // block, block, cols // block, block).sum(3, dtype=dtype).sum(1)


def _score_layer(name: str, saliency: torch.Tensor, pattern: Pattern) -> _LayerScores:
    rows, cols = saliency.shape
    sal = saliency.detach().float().abs()
    if not bool(torch.isfinite(sal).all()):
        raise ModelError(f"saliency of layer {name!r} contains NaN or Inf; check the layer's weights and gradients")
    b = pattern.block
    padded = pad_to_blocks(sal, b, float("-inf"))
    nm = nm_mask(padded, pattern)
    if padded.shape != sal.shape:  # a group with fewer than n real entries must not keep padding
        nm &= torch.isfinite(padded)
    block_scores = _block_sums(padded.masked_fill(~nm, 0.0), b, torch.float64)  # [nbr, nbc]
    block_counts = _block_sums(nm, b, torch.int64)  # real kept entries per block
    sorted_scores, order = torch.sort(block_scores, dim=1, stable=True)
    sorted_counts = torch.gather(block_counts, 1, order)
    return _LayerScores(name, rows, cols, nm, order, sorted_scores.sum(0), sorted_counts.sum(0))


def _place_mask(layer: _LayerScores, dropped: int, pattern: Pattern) -> torch.Tensor:
    """Drop, in every block-row, the blocks at rank positions ``0..dropped-1`` of that row."""
    nbr, nbc = layer.order.shape
    keep_rank = torch.arange(nbc) >= dropped  # by rank position
    keep_block = torch.zeros(nbr, nbc, dtype=torch.bool)
    keep_block.scatter_(1, layer.order, keep_rank.expand(nbr, nbc))  # rank position -> its own block
    b = pattern.block
    blocks = as_blocks(layer.nm, b) & keep_block[:, :, None, None]
    return from_blocks(blocks)[: layer.rows, : layer.cols]


def select_hybrid_masks(saliencies: dict[str, torch.Tensor], pattern: Pattern, sparsity: float) -> SelectionResult:
    """Pick hybrid masks for all layers together so that the pruned layers reach ``sparsity``.

    ``saliencies`` maps a layer name to its saliency in the GEMM view ``[rows, K]``. The result
    is deterministic: ties are broken by layer order, then rank position.
    """
    layers = [_score_layer(name, sal, pattern) for name, sal in saliencies.items()]
    total = sum(layer.rows * layer.cols for layer in layers)
    kept_nm = sum(int(layer.removal.sum()) for layer in layers)
    # candidates: (column score, layer index, rank position); the last position is never dropped
    scores, owners, positions, removals = [], [], [], []
    for li, layer in enumerate(layers):
        count = layer.column_scores.numel() - 1
        scores.append(layer.column_scores[:count])
        owners.append(torch.full((count,), li, dtype=torch.int64))
        positions.append(torch.arange(count))
        removals.append(layer.removal[:count])
    dropped = [0] * len(layers)
    if scores and total:
        s, o, pos, rem = (torch.cat(t) for t in (scores, owners, positions, removals))
        # sort by score; stable on (layer, position) so each layer drops a prefix of positions
        order = torch.sort(s, stable=True).indices
        removed = torch.cumsum(rem[order], 0)
        need = kept_nm - (1.0 - sparsity) * total  # weights block pruning must remove
        # the number of candidates whose removal lands closest to the target (ties: prune more)
        gaps = torch.cat([torch.tensor([need], dtype=torch.float64), (need - removed.to(torch.float64))]).abs()
        best = gaps.min()
        count = int((gaps <= best + 1e-9).nonzero().max())
        for idx in order[:count].tolist():
            dropped[int(o[idx])] = max(dropped[int(o[idx])], int(pos[idx]) + 1)
    result: dict[str, LayerSelection] = {}
    kept_total = 0
    for layer, d in zip(layers, dropped):
        mask = _place_mask(layer, d, pattern)
        kept = int(mask.sum())
        kept_total += kept
        nbc = layer.column_scores.numel()
        result[layer.name] = LayerSelection(mask, nbc - d, nbc, kept, layer.rows * layer.cols)
    achieved = 1.0 - kept_total / total if total else 0.0
    return SelectionResult(result, sparsity, achieved)
