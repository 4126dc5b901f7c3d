"""Helpers shared by the test files (random hybrid masks, the hybrid-mask check, error measures,
the small CNN); test files import them with ``from conftest import ...`` (``tests`` is on the
pytest path). Library helpers stay in the library: ``crisp.apply_masks`` builds the masked dense
model and ``crisp.sparsity.masking.relative_error`` is the norm-wise relative error."""

from __future__ import annotations

import pytest
import torch

import crisp
from crisp.sparsity.gemm_view import as_blocks, pad_to_blocks
from crisp.sparsity.pattern import Pattern


def random_hybrid_mask(rows: int, cols: int, p: Pattern, gen: torch.Generator, keep_share: float = 0.4,
                       *, exact: bool = True) -> torch.Tensor:
    """A random ``[rows, cols]`` GEMM mask in blocks of ``p.block``, each block kept with
    probability ``keep_share``.

    ``exact=True``: exactly n of every m inside kept blocks, at least one kept block per
    block-row, never all zero (what the kernels get). ``exact=False``: at most n per group (some
    groups keep fewer) and block-rows may keep no block (what the format must still store).
    """
    b, m, n = p.block, p.m, p.n
    nbr, nbc = -(-rows // b), -(-cols // b)
    if exact:
        mask = (torch.rand(nbr * b, nbc * b // m, m, generator=gen).argsort(-1) < n).reshape(nbr * b, nbc * b)
        kept = torch.rand(nbr, nbc, generator=gen) < keep_share
        kept[torch.arange(nbr), torch.randint(0, nbc, (nbr,), generator=gen)] = True
    else:
        scores = torch.rand(nbr * b, nbc * b // m, m, generator=gen)
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(n, dim=-1).indices, True)
        mask &= torch.rand(mask.shape, generator=gen) < 0.9
        mask = mask.reshape(nbr * b, nbc * b)
        kept = torch.rand(nbr, nbc, generator=gen) < keep_share
    mask &= kept.repeat_interleave(b, 0).repeat_interleave(b, 1)
    mask = mask[:rows, :cols].clone()
    if exact and not mask.any():  # tiny K: keep one weight so the layer is not entirely pruned
        mask[0, 0] = True
    return mask


def assert_hybrid(mask: torch.Tensor, p: Pattern) -> None:
    """``mask`` (a GEMM mask) is hybrid: every block is all-zero or keeps exactly n per full group
    of m (min(n, real) at the K edge); every block-row keeps the same number of blocks, at least one."""
    rows, cols = mask.shape
    blocks = as_blocks(pad_to_blocks(mask, p.block, False), p.block)
    real = as_blocks(pad_to_blocks(torch.ones(rows, cols, dtype=torch.bool), p.block, False), p.block)
    kept = blocks.any(dim=(2, 3))
    nbr, nbc = kept.shape
    groups = blocks.reshape(nbr, nbc, p.block, p.block // p.m, p.m).sum(-1)
    real_groups = real.reshape(nbr, nbc, p.block, p.block // p.m, p.m).sum(-1)
    want = torch.where(real_groups > 0, torch.clamp(real_groups, max=p.n), torch.zeros_like(real_groups))
    assert torch.equal(groups, torch.where(kept[:, :, None, None], want, torch.zeros_like(want)))
    per_row = kept.sum(1)
    assert int(per_row.min()) == int(per_row.max()) >= 1


def max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute deviation over the largest magnitude of ``want`` (stricter per element
    than the norm-wise ``crisp.sparsity.masking.relative_error``)."""
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def max_error_vs_float32_bound(got: torch.Tensor, want: torch.Tensor, magnitude: torch.Tensor, terms: int,
                               rel: float = 1e-5) -> float:
    """``max_relative_error`` that does not fail where a sum's terms cancel: the largest
    ``|got - want|`` over ``rel`` times the result's scale, the larger of the largest ``|want|`` and
    the typical size of a ``terms``-term sum of these terms, ``max(magnitude) / sqrt(terms)``, where
    ``magnitude`` is the same sum over absolute values (``|x| @ |w|``). On random data the two agree
    (the test is as strict as ``max_relative_error``); a single output of -0.04 from twenty products
    of size 1 no longer fails on float32 rounding. At most 1 means equal."""
    scale = torch.maximum(want.abs().max(), magnitude.abs().max() / max(1, terms) ** 0.5)
    return float((got - want).abs().max() / (rel * scale.clamp_min(1e-12)))


@pytest.fixture(scope="module")
def small_cnn() -> tuple[torch.nn.Module, torch.Tensor]:
    """The in-project small CNN (seeded weights, eval mode) and a batch of two 1x8x8 inputs."""
    return crisp.models.build("small_cnn"), torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
