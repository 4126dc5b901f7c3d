"""Global hybrid mask selection: optimality, load balance, targets, determinism."""

import itertools

import pytest
import torch

from crisp import Pattern
from crisp.sparsity.gemm_view import as_blocks, pad_to_blocks
from conftest import assert_hybrid
from crisp.sparsity.selection import nm_mask, select_hybrid_masks


def block_keep(mask: torch.Tensor, block: int) -> torch.Tensor:
    return as_blocks(pad_to_blocks(mask, block, False), block).any(dim=(2, 3))


def brute_force_best(block_scores: torch.Tensor, keep: int) -> float:
    """Highest saliency any selection that keeps `keep` blocks in every row can carry."""
    best_rows = []
    for row in block_scores:
        best_rows.append(max(sum(row[list(c)].tolist()) for c in itertools.combinations(range(len(row)), keep)))
    return sum(best_rows)


def test_kept_blocks_carry_the_maximum_saliency_of_any_equal_per_row_selection():
    # a case where rows disagree about which blocks matter: placing the mask by unsorted
    # position (the public code's bug) would keep the wrong blocks in most rows
    p = Pattern(2, 4, 4)
    gen = torch.Generator().manual_seed(3)
    sal = torch.rand(16, 24, generator=gen) * torch.rand(1, 24, generator=gen).repeat_interleave(1, 1)
    sal = sal * (torch.rand(16 // 4, 24 // 4, generator=gen) * 10).repeat_interleave(4, 0).repeat_interleave(4, 1)
    for keep in (1, 2, 3, 5):
        # sparsity that keeps exactly `keep` of 6 blocks per row at 2:4
        target = 1 - 0.5 * keep / 6
        res = select_hybrid_masks({"l": sal}, p, target).layers["l"]
        assert res.kept_blocks_per_row == keep
        kept_saliency = float((sal * res.mask).sum())
        nm = nm_mask(pad_to_blocks(sal, 4, float("-inf")), p)
        scores = as_blocks(torch.where(nm, sal, torch.zeros(())), 4).sum(dim=(2, 3))
        assert kept_saliency == pytest.approx(brute_force_best(scores, keep), rel=1e-6)
        assert_hybrid(res.mask, p)


def test_nm_step_keeps_largest_n_of_each_group():
    p = Pattern(2, 4, 4)
    sal = torch.tensor([[0.1, 0.9, 0.5, 0.2, 4.0, 3.0, 2.0, 1.0]])
    mask = nm_mask(sal, p)
    assert mask.tolist() == [[False, True, True, False, True, True, False, False]]


@pytest.mark.parametrize("n,m,block,target", [(2, 4, 32, 0.9), (1, 4, 16, 0.95), (3, 4, 64, 0.8), (2, 4, 16, 0.5)])
def test_global_target_met_and_pattern_obeyed(n, m, block, target):
    p = Pattern(n, m, block)
    gen = torch.Generator().manual_seed(0)
    sal = {
        "a": torch.rand(256, 1152, generator=gen),
        "b": torch.rand(512, 2304, generator=gen) * 0.5,
        "c": torch.rand(100, 300, generator=gen),  # rows and K not multiples of the block
    }
    res = select_hybrid_masks(sal, p, target)
    assert abs(res.achieved_sparsity - target) <= 0.01
    total = sum(s.numel() for s in sal.values())
    kept = sum(int(layer.mask.sum()) for layer in res.layers.values())
    assert res.achieved_sparsity == pytest.approx(1 - kept / total)
    for name, layer in res.layers.items():
        assert layer.mask.shape == sal[name].shape
        assert_hybrid(layer.mask, p)
        assert int(layer.mask.sum()) == layer.kept_weights


def test_nm_only_when_target_equals_nm_floor():
    p = Pattern(2, 4, 32)
    res = select_hybrid_masks({"a": torch.rand(64, 256)}, p, 0.5)
    layer = res.layers["a"]
    assert layer.kept_blocks_per_row == layer.blocks_per_row
    assert res.achieved_sparsity == 0.5


def test_every_row_keeps_a_block_even_at_extreme_targets():
    p = Pattern(1, 4, 32)
    res = select_hybrid_masks({"a": torch.rand(64, 256), "b": torch.rand(64, 64)}, p, 0.999)
    for layer in res.layers.values():
        assert layer.kept_blocks_per_row == 1


def test_selection_is_deterministic_with_ties():
    p = Pattern(2, 4, 8)
    sal = {"a": torch.ones(32, 64), "b": torch.ones(16, 32)}
    first = select_hybrid_masks(sal, p, 0.8)
    second = select_hybrid_masks(sal, p, 0.8)
    for name in sal:
        assert torch.equal(first.layers[name].mask, second.layers[name].mask)
