"""The schedule (N:M first, then +Delta per step) and masks that follow the data between steps."""

import pytest
import torch
from torch import nn

from crisp.errors import CrispError
from crisp.sparsity.pattern import Pattern
from crisp.pruning.prune import prune
from crisp.pruning.loop import hybrid_select
from crisp.pruning.saliency import magnitude_saliency, taylor_saliency
from crisp.pruning.schedule import schedule_delta, sparsity_schedule


def test_nm_first_then_equal_block_steps_up_to_kappa():
    p = Pattern(2, 4, 32)
    s = sparsity_schedule(p, 0.9, 4)
    assert s[0] == 0.5 and s[-1] == 0.9 and len(s) == 5
    assert schedule_delta(p, 0.9, 4) == pytest.approx(0.1)
    assert all(b - a == pytest.approx(0.1) for a, b in zip(s, s[1:]))
    assert sparsity_schedule(p, 0.5, 3) == [0.5]  # N:M only
    assert sparsity_schedule(Pattern(1, 1, 8), 0.6, 2) == [0.0, 0.3, 0.6]  # block-only pattern
    assert sparsity_schedule(p, 0.9, 0) == [0.9]  # one-shot: N:M and blocks in one step
    assert schedule_delta(p, 0.9, 0) == 0.0
    with pytest.raises(CrispError, match="steps"):
        sparsity_schedule(p, 0.9, -1)


class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2, bias=False)

    def forward(self, x):
        return self.fc(x)


def test_a_pruned_weight_that_the_data_needs_comes_back_at_the_next_step():
    """Features 0 and 1 decide the label, but their weights start tiny, so step 0 (2:4) prunes
    them. The STE gives them the dense gradient during fine-tuning; they grow, and the next
    selection keeps them (a zeroed gradient, as in the public code, would lose them for good)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    data = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    model = Lin()
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(2, 16, generator=gen).abs() * 0.5 + 0.5)
        model.fc.weight[:, 0:2] = 1e-3
    # precondition: at step 0 (2:4 only) both saliencies prune features 0 and 1
    for sal in (magnitude_saliency(model), taylor_saliency(model, data, [0, 1])):
        step0, _ = hybrid_select({"fc.weight": sal["fc.weight"]}, Pattern(2, 4, 4), 0.5)
        assert not bool(step0["fc.weight"][:, 0:2].any())
    for saliency in ("magnitude", "taylor"):
        seen = []
        pruned, h = prune(model, data, classes=[0, 1], pattern="2:4", block=4, sparsity=0.625, steps=1,
                          epochs_per_step=6, warmup_epochs=0, lr=0.5, weight_decay=1e-3, saliency=saliency,
                          callbacks=lambda r: seen.append(r), progress=False)
        assert [round(r.target_sparsity, 4) for r in seen] == [0.5, 0.625]
        mask = h.masks["fc.weight"]
        assert seen[1].mask_change > 0
        assert bool(mask[:, 0:2].all()), (saliency, mask[:, :4])
        assert h.steps[-1].accuracy > 0.9
