"""BatchNorm recalibration after a mask change: running statistics re-estimated on the user data."""

import torch
from torch import nn

from crisp.pruning.finetune import recalibrate_batchnorm


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(4 * 5 * 5, 3))


def test_running_statistics_are_the_data_statistics():
    model = _model().eval()
    bn = model[1]
    bn.running_mean.fill_(7.0)
    bn.running_var.fill_(100.0)
    x = torch.randn(64, 2, 5, 5) * 3 + 1
    batches = [(x[i:i + 16], torch.zeros(16, dtype=torch.long)) for i in range(0, 64, 16)]
    assert recalibrate_batchnorm(model, batches) == 1
    with torch.no_grad():
        act = model[0](x)
    torch.testing.assert_close(bn.running_mean, act.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    per_batch = torch.stack([act[i:i + 16].var((0, 2, 3), unbiased=True) for i in range(0, 64, 16)]).mean(0)
    torch.testing.assert_close(bn.running_var, per_batch, rtol=1e-4, atol=1e-4)
    assert bn.momentum == 0.1 and not model.training  # modes and momentum restored


def test_modes_restored_and_weights_untouched():
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_batchnorm(model, [(torch.randn(8, 2, 5, 5), torch.zeros(8, dtype=torch.long))])
    assert all(m.training for m in model.modules())
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v)


def test_single_sample_batches_keep_the_statistics():
    model = _model().eval()
    model[1].running_mean.fill_(2.0)
    assert recalibrate_batchnorm(model, [(torch.randn(1, 2, 5, 5), torch.zeros(1, dtype=torch.long))]) == 0
    assert torch.all(model[1].running_mean == 2.0)


def test_no_batchnorm_is_a_no_op():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert recalibrate_batchnorm(model, [(torch.randn(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))]) == 0


def test_prune_recalibrates_after_the_last_mask_change():
    """Frozen-weight magnitude 2:4 (no fine-tune): the pruned model's BatchNorm statistics are those
    of the masked layer on the user data, not the dense model's."""
    from crisp.pruning.prune import prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 16, 4)).eval()
    model[1].running_mean.fill_(3.0)  # statistics that describe some other model
    x = torch.randn(64, 8, 4, 4)
    y = torch.arange(64) % 4
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    pruned, hist = prune(model, data, classes=[0, 1, 2, 3], pattern="2:4", block=8, sparsity=0.5, steps=1,
                         warmup_epochs=0, epochs_per_step=0, saliency="magnitude", progress=False)
    with torch.no_grad():
        act = nn.functional.conv2d(x, model[0].weight * hist.masks["0.weight"], padding=1)
    torch.testing.assert_close(pruned[1].running_mean, act.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
