"""Learned N:M masks: C(m, n) patterns, hard Gumbel-softmax samples in training, argmax at eval,
gradients to the logits, and block selection that keeps the learned choice."""

import math

import torch
from torch import nn

from crisp.sparsity.gemm_view import weight_to_gemm
from crisp.pruning.learned_masks import LearnedMasking, block_keep_mask, nm_patterns, restrict_to_choice
from crisp.sparsity.pattern import Pattern
from crisp.pruning.loop import hybrid_select


def test_patterns_are_all_n_of_m_choices():
    for n, m in [(2, 4), (1, 4), (3, 4), (2, 8)]:
        d = nm_patterns(n, m)
        assert d.shape == (math.comb(m, n), m)
        assert bool((d.sum(1) == n).all())
        assert len({tuple(r.tolist()) for r in d}) == d.shape[0]


def make(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 9, 3))
    masking = LearnedMasking(model, ["0.weight", "3.weight"], Pattern(2, 4, 8))
    return model, masking


def group_counts(mask_w, m=4):
    g = weight_to_gemm(mask_w)
    return g.reshape(g.shape[0], -1, m).sum(-1)


def test_training_samples_valid_patterns_and_eval_takes_the_argmax():
    model, masking = make()
    conv = model[0]
    x = torch.randn(2, 8, 3, 3)
    model.train()
    w = masking.layers["0.weight"]
    sampled = [w(conv.parametrizations.weight.original.detach()) != 0 for _ in range(4)]
    for s in sampled:
        assert bool((group_counts(s) <= 2).all())
    assert any(not torch.equal(sampled[0], s) for s in sampled[1:])  # fresh samples in training
    model.eval()
    a, b = model(x), model(x)
    assert torch.equal(a, b)  # eval: no sampling
    hard = masking.hard_masks()["0.weight"]
    assert bool((group_counts(hard) == 2).all())
    assert torch.equal(conv.weight, conv.parametrizations.weight.original * hard)


def test_logits_learn_and_weights_get_straight_through_gradients():
    model, masking = make()
    model.train()
    x, y = torch.randn(16, 8, 3, 3), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    logits = masking.layers["0.weight"].logits
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    w = model[0].parametrizations.weight.original
    masked_out = ~masking.hard_masks()["0.weight"]
    assert float(w.grad[masked_out].abs().sum()) > 0


def test_block_selection_keeps_the_learned_choice():
    model, masking = make(1)
    p = Pattern(2, 4, 8)
    choice = masking.nm_masks()
    sal = {n: torch.rand(choice[n].shape) for n in choice}
    restricted = {n: restrict_to_choice(sal[n], choice[n]) for n in choice}
    masks, result = hybrid_select(restricted, p, 0.75)
    for n, mask in masks.items():
        assert bool((mask <= choice[n]).all())  # never an entry the logits did not choose
        keep = block_keep_mask(weight_to_gemm(mask), p.block)
        assert torch.equal(weight_to_gemm(mask), weight_to_gemm(choice[n]) & keep)
    assert abs(result.achieved_sparsity - 0.75) < 0.05


def test_bake_leaves_frozen_weights_times_the_hard_mask():
    model, masking = make(2)
    original = model[0].parametrizations.weight.original.detach().clone()
    masks = masking.bake()
    assert torch.equal(model[0].weight.detach(), original * masks["0.weight"])
