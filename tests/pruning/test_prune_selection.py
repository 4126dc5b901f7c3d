"""CRISP's selection as prune() uses it (weight-shaped saliency, conv GEMM view): the kept
blocks carry the most saliency any equal-blocks-per-row selection can keep, unlike the public
code's placement by unsorted position."""

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crisp.sparsity.gemm_view import as_blocks, pad_to_blocks, weight_to_gemm
from crisp.sparsity.pattern import Pattern
from crisp.pruning.loop import hybrid_select
from crisp.sparsity.selection import nm_mask


def nm_block_scores(sal_gemm: torch.Tensor, p: Pattern) -> torch.Tensor:
    padded = pad_to_blocks(sal_gemm.double(), p.block, float("-inf"))
    keep = nm_mask(padded, p) & torch.isfinite(padded)
    return as_blocks(torch.where(keep, padded, torch.zeros(())), p.block).sum(dim=(2, 3))


def best_equal_per_row(scores: torch.Tensor, keep: int) -> float:
    """Brute force over every choice of `keep` blocks in every row."""
    total = 0.0
    for row in scores:
        total += max(float(row[list(c)].sum()) for c in itertools.combinations(range(row.numel()), keep))
    return total


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), drop=st.integers(1, 3))
def test_kept_saliency_is_the_equal_per_row_optimum(seed, drop):
    p = Pattern(2, 4, 4)
    gen = torch.Generator().manual_seed(seed)
    # conv weight [Cout=8, Cin=4, 2, 2]: GEMM view 8 x 16 -> 2 block-rows x 4 block-columns
    sal = torch.rand(8, 4, 2, 2, generator=gen) ** 3
    target = 1 - 0.5 * (4 - drop) / 4
    masks, result = hybrid_select({"conv.weight": sal}, p, target)
    assert result.layers["conv.weight"].kept_blocks_per_row == 4 - drop
    g_sal, g_mask = weight_to_gemm(sal).double(), weight_to_gemm(masks["conv.weight"])
    kept = float((g_sal * g_mask).sum())
    optimum = best_equal_per_row(nm_block_scores(g_sal, p), 4 - drop)
    assert abs(kept - optimum) < 1e-9 * max(1.0, optimum)


def test_placement_by_unsorted_position_keeps_less_than_crisp():
    """The public code's bug: column scores from sorted scores, mask placed by unsorted position."""
    p = Pattern(1, 1, 1)  # plain blocks of one weight, to make the case readable
    sal = torch.tensor([[9.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 9.0]])
    masks, _ = hybrid_select({"fc.weight": sal}, p, 0.75)  # keep one block per row
    assert float((sal * masks["fc.weight"]).sum()) == 18.0  # each row keeps its own 9
    buggy = torch.zeros_like(sal, dtype=torch.bool)
    buggy[:, 3] = True  # rank position 3 placed at column 3 in every row
    assert float((sal * buggy).sum()) == 10.0 < 18.0
