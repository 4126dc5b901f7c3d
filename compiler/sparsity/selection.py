"""Hybrid mask selection (CRISP Alg. 1, lines 2-10), as pure functions on saliency tensors.

1. N:M: in each group of m along the reduction axis keep the n entries of largest saliency.
2. Block score = saliency kept by step 1 inside the block.
3. Sort block scores inside each block-row ascending; the column score of rank position ``o``
   is the sum over block-rows of their ``o``-th smallest score.
4. Rank the candidates (rank positions) of all layers together by the *allocation* rule's key
   and prune the lowest until the sparsity comes closest to the target (ties: prune more):
   layer ``l`` drops the same number of blocks in every block-row, and each row drops its own
   lowest-scoring blocks (the mask is placed through the sort permutation, not by unsorted
   position as the public CRISP code does).
5. Every block-row keeps at least one block.

Allocation rules (the key of rank position ``o`` of a layer; see :data:`ALLOCATIONS`):
``"paper"``: the raw column score ``c_o`` (Alg. 1 read literally; layers with few block-rows or
small scores collapse); ``"normalized"``: ``c_o`` per removed weight, divided by the layer's mean
N:M-kept saliency (a common scale across layers); ``"lamp"``: ``c_o / sum_{o' >= o} c_o'``, the
share of the layer's remaining saliency the position removes (LAMP, Lee et al. 2021).

Saliency is given per layer in the GEMM view ``[rows, K]`` (see :mod:`crisp.sparsity.gemm_view`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crisp.errors import ModelError, PatternError
from crisp.sparsity.gemm_view import as_blocks, from_blocks, pad_to_blocks
from crisp.sparsity.pattern import Pattern


ALLOCATIONS = ("paper", "normalized", "lamp")
DEFAULT_ALLOCATION = "normalized"


def check_allocation(allocation: str) -> str:
    """``allocation`` if it names a rule of :data:`ALLOCATIONS`, else a :class:`crisp.errors.PatternError`."""
    if not isinstance(allocation, str) or allocation not in ALLOCATIONS:
        raise PatternError(
            f"unknown allocation {allocation!r}; known allocations: {', '.join(ALLOCATIONS)} "
            f"(default {DEFAULT_ALLOCATION!r}; 'paper' is CRISP Alg. 1 read literally)"
        )
    return allocation


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
    mean_saliency: float  # mean saliency of the layer's N:M-kept real entries


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
    kept = int(block_counts.sum())
    mean = float(block_scores.sum()) / max(1, kept)
    return _LayerScores(name, rows, cols, nm, order, sorted_scores.sum(0), sorted_counts.sum(0), mean)


def _allocation_keys(layer: _LayerScores, allocation: str) -> torch.Tensor:
    """The ranking key of each rank position of ``layer`` under ``allocation`` (float64 [nbc]).

    Keys are made non-decreasing along the rank positions (running maximum), so that pruning the
    lowest keys globally always drops a prefix of positions in each layer."""
    c = layer.column_scores.to(torch.float64)
    if allocation == "paper":
        keys = c
    elif allocation == "normalized":
        per_weight = c / layer.removal.clamp(min=1).to(torch.float64)
        keys = per_weight / layer.mean_saliency if layer.mean_saliency > 0 else torch.zeros_like(c)
    else:  # lamp
        tail = torch.flip(torch.cumsum(torch.flip(c, [0]), 0), [0])
        keys = torch.where(tail > 0, c / tail.clamp(min=1e-300), torch.zeros_like(c))
    return torch.cummax(keys, 0).values


def _place_mask(layer: _LayerScores, dropped: int, pattern: Pattern) -> torch.Tensor:
    """Drop, in every block-row, the blocks at rank positions ``0..dropped-1`` of that row."""
    nbr, nbc = layer.order.shape
    keep_rank = torch.arange(nbc) >= dropped  # by rank position
    keep_block = torch.zeros(nbr, nbc, dtype=torch.bool)
    keep_block.scatter_(1, layer.order, keep_rank.expand(nbr, nbc))  # rank position -> its own block
    b = pattern.block
    blocks = as_blocks(layer.nm, b) & keep_block[:, :, None, None]
    return from_blocks(blocks)[: layer.rows, : layer.cols]


def select_hybrid_masks(saliencies: dict[str, torch.Tensor], pattern: Pattern, sparsity: float,
                        allocation: str = DEFAULT_ALLOCATION) -> SelectionResult:
    """Pick hybrid masks for all layers together so that the pruned layers reach ``sparsity``.

    ``saliencies`` maps a layer name to its saliency in the GEMM view ``[rows, K]``;
    ``allocation`` is the rule that compares rank positions across layers (:data:`ALLOCATIONS`).
    The result is deterministic: ties are broken by layer order, then rank position.
    """
    check_allocation(allocation)
    layers = [_score_layer(name, sal, pattern) for name, sal in saliencies.items()]
    total = sum(layer.rows * layer.cols for layer in layers)
    kept_nm = sum(int(layer.removal.sum()) for layer in layers)
    # candidates: (column score, layer index, rank position); the last position is never dropped
    scores, owners, positions, removals = [], [], [], []
    for li, layer in enumerate(layers):
        count = layer.column_scores.numel() - 1
        scores.append(_allocation_keys(layer, allocation)[:count])
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


def density_distribution(layers: dict[str, tuple[float, int]]) -> dict:
    """Min / median / max density of the pruned layers and the layers at their floor.

    ``layers`` maps a layer name to ``(density, kept blocks per block-row)``; a layer is at its
    floor when it keeps one block per row (allocation cannot take more from it)."""
    if not layers:
        return {"layers": 0, "min": None, "median": None, "max": None, "min_layer": None, "max_layer": None,
                "at_floor": []}
    ranked = sorted(layers.items(), key=lambda kv: (kv[1][0], kv[0]))
    dens = [d for _, (d, _) in ranked]
    mid = len(dens) // 2
    median = dens[mid] if len(dens) % 2 else 0.5 * (dens[mid - 1] + dens[mid])
    return {
        "layers": len(dens), "min": dens[0], "median": median, "max": dens[-1],
        "min_layer": ranked[0][0], "max_layer": ranked[-1][0],
        "at_floor": [name for name, (_, kept) in layers.items() if kept <= 1],
    }


def density_line(dist: dict) -> str:
    """One line for a :func:`density_distribution`, e.g. for reports and the CLI."""
    if not dist["layers"]:
        return "layer density: no pruned layer"
    floor = dist["at_floor"]
    shown = ", ".join(floor[:6]) + (f", ... ({len(floor) - 6} more)" if len(floor) > 6 else "")
    return (
        f"layer density over {dist['layers']} pruned layers: min {dist['min']:.3f} ({dist['min_layer']}), "
        f"median {dist['median']:.3f}, max {dist['max']:.3f} ({dist['max_layer']}); "
        f"at the floor of 1 block per row: {len(floor)}" + (f" ({shown})" if floor else "")
    )
