"""Allocation rules of the global hybrid selection: invariants for every rule (hypothesis),
scale invariance of the balanced rules, collapse under the paper's rule, clear errors."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import assert_hybrid
from crisp import Pattern
from crisp.errors import CrispError
from crisp.sparsity.selection import (
    ALLOCATIONS, DEFAULT_ALLOCATION, density_distribution, density_line, select_hybrid_masks,
)

PATTERNS = [Pattern(2, 4, 8), Pattern(1, 4, 4), Pattern(2, 4, 4), Pattern(3, 4, 8), Pattern(1, 2, 4)]


def _layers(seed: int, count: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(count):
        rows = int(torch.randint(3, 40, (1,), generator=gen))
        cols = int(torch.randint(3, 70, (1,), generator=gen))
        scale = float(10 ** torch.empty(1).uniform_(-3, 3, generator=gen))
        out[f"l{i}"] = torch.rand(rows, cols, generator=gen) ** 3 * scale
    return out


def _max_step(sal: dict[str, torch.Tensor], p: Pattern) -> int:
    """An upper bound of the real weights one rank position of one layer removes."""
    return max(math.ceil(s.shape[0] / p.block) * p.block * p.block * p.n // p.m for s in sal.values())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 4), pi=st.integers(0, len(PATTERNS) - 1),
       frac=st.floats(0.0, 0.999), allocation=st.sampled_from(ALLOCATIONS))
def test_every_rule_keeps_the_hybrid_invariants_and_meets_the_target(seed, count, pi, frac, allocation):
    p = PATTERNS[pi]
    sal = _layers(seed, count)
    target = (1 - p.n / p.m) + frac * (p.n / p.m)
    res = select_hybrid_masks(sal, p, target, allocation)
    total = sum(s.numel() for s in sal.values())
    kept = 0
    for name, layer in res.layers.items():
        assert layer.mask.shape == sal[name].shape
        assert_hybrid(layer.mask, p)  # N of M in kept blocks, equal kept blocks per row, >= 1 per row
        assert int(layer.mask.sum()) == layer.kept_weights
        kept += layer.kept_weights
    assert res.achieved_sparsity == pytest.approx(1 - kept / total)
    floor = select_hybrid_masks(sal, p, 1 - 1e-9, allocation).achieved_sparsity  # every layer at 1 block per row
    if target <= floor:
        # the closest reachable point: within half of the largest single step of the target
        assert abs(res.achieved_sparsity - target) <= _max_step(sal, p) / (2 * total) + 1e-9
    else:
        assert res.achieved_sparsity == pytest.approx(floor)


@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_target_within_001_on_layers_of_realistic_size(allocation):
    p = Pattern(2, 4, 32)
    gen = torch.Generator().manual_seed(1)
    sal = {"a": torch.rand(256, 1152, generator=gen), "b": torch.rand(512, 2304, generator=gen) * 1e-3,
           "c": torch.rand(100, 300, generator=gen) * 50}
    for target in (0.6, 0.8, 0.9, 0.95):
        res = select_hybrid_masks(sal, p, target, allocation)
        assert abs(res.achieved_sparsity - target) <= 0.01


@pytest.mark.parametrize("allocation", [a for a in ALLOCATIONS if a != "paper"])
def test_balanced_rules_do_not_depend_on_a_layers_score_scale(allocation):
    p = Pattern(2, 4, 8)
    gen = torch.Generator().manual_seed(2)
    sal = {"a": torch.rand(32, 96, generator=gen), "b": torch.rand(64, 48, generator=gen)}
    base = select_hybrid_masks(sal, p, 0.85, allocation)
    scaled = select_hybrid_masks({"a": sal["a"] * 1e-4, "b": sal["b"] * 1e3}, p, 0.85, allocation)
    for name in sal:
        assert torch.equal(base.layers[name].mask, scaled.layers[name].mask)


def test_paper_rule_collapses_a_small_scale_layer_and_normalized_does_not():
    p = Pattern(2, 4, 8)
    gen = torch.Generator().manual_seed(3)
    same = torch.rand(32, 96, generator=gen)
    sal = {"big": same.clone(), "small": same.clone() * 0.01}
    paper = select_hybrid_masks(sal, p, 0.85, "paper").layers
    normalized = select_hybrid_masks(sal, p, 0.85, "normalized").layers
    assert paper["small"].kept_blocks_per_row == 1 < paper["big"].kept_blocks_per_row
    # identical layers up to scale: the balanced rule gives both the same number of blocks (ties -> within one)
    assert abs(normalized["small"].kept_blocks_per_row - normalized["big"].kept_blocks_per_row) <= 1
    assert normalized["small"].kept_blocks_per_row > 1


def test_unknown_allocation_names_the_known_ones():
    with pytest.raises(CrispError, match="paper.*normalized.*lamp"):
        select_hybrid_masks({"a": torch.rand(8, 8)}, Pattern(2, 4, 4), 0.8, "balanced-ish")
    assert DEFAULT_ALLOCATION in ALLOCATIONS


def test_density_distribution_names_min_max_and_floor_layers():
    dist = density_distribution({"a": (0.5, 4), "b": (0.1, 1), "c": (0.3, 2), "d": (0.02, 1)})
    assert (dist["min"], dist["median"], dist["max"]) == (0.02, 0.2, 0.5)
    assert (dist["min_layer"], dist["max_layer"]) == ("d", "a")
    assert dist["at_floor"] == ["b", "d"]
    line = density_line(dist)
    assert "min 0.020 (d)" in line and "median 0.200" in line and "floor of 1 block per row: 2 (b, d)" in line
