"""The stability certificate (Lemmas 3.4-3.6): what it certifies really keeps its class."""

import pytest
import torch
from torch import nn

from crisp.errors import CrispError
from crisp.pruning.stability import stability_certificate


def mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight.mul_(0.6)
        model[2].weight.mul_(0.6)
    return model


def small_masks(model, share=0.25):
    """Mask out the smallest-magnitude weights (tiny perturbation, so some samples certify)."""
    masks = {}
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            cut = p.detach().abs().flatten().kthvalue(max(1, int(share * p.numel()))).values
            masks[name] = p.detach().abs() > cut
    return masks


def masked(model, masks, base=None):
    import copy

    out = copy.deepcopy(model if base is None else base)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    return out


def test_certified_samples_keep_their_class_layer_by_layer_and_all_together():
    model = mlp()
    masks = small_masks(model)
    x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(1)) * 0.5
    cert = stability_certificate(model, masks, [(x, torch.zeros(2000, dtype=torch.long))])
    assert cert.samples == 2000
    p = torch.softmax(model(x), 1)
    top2 = p.topk(2, 1).values
    gamma = (top2[:, 0] - top2[:, 1]) / 2
    xnorm = x.abs().amax(1)
    pred = model(x).argmax(1)
    for layer in cert.layers:
        certified = gamma > layer.coefficient * xnorm
        assert layer.certified == pytest.approx(float(certified.double().mean()))
        one = masked(model, {layer.name: masks[layer.name]})
        assert torch.equal(one(x).argmax(1)[certified], pred[certified])
    together = gamma > cert.all_layers_coefficient * xnorm
    assert cert.all_layers_certified == pytest.approx(float(together.double().mean()))
    assert 0 < cert.all_layers_certified < 1  # certifies some, honestly not all
    assert torch.equal(masked(model, masks)(x).argmax(1)[together], pred[together])
    assert cert.any_mask_certified <= min(l.certified for l in cert.layers)  # Lemma 3.5 is looser


def test_update_bound_reusing_the_mask_is_sound():
    model = mlp()
    masks = small_masks(model)
    gen = torch.Generator().manual_seed(3)
    update = {n: p.detach() + 0.01 * torch.randn(p.shape, generator=gen)
              for n, p in model.named_parameters() if n.endswith("weight")}
    x = torch.randn(2000, 4, generator=gen) * 0.2
    cert = stability_certificate(model, masks, [x], update=update)
    pred = model(x).argmax(1)
    p = torch.softmax(model(x), 1).topk(2, 1).values
    gamma = (p[:, 0] - p[:, 1]) / 2
    for layer in cert.layers:
        assert layer.update_coefficient >= layer.coefficient
        ok = gamma > layer.update_coefficient * x.abs().amax(1)
        updated = masked(model, {}, None)
        with torch.no_grad():
            dict(updated.named_parameters())[layer.name].copy_(update[layer.name] * masks[layer.name])
        assert torch.equal(updated(x).argmax(1)[ok], pred[ok])


def test_batchnorm_is_folded_and_non_chain_models_are_refused():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    conv[1].running_var.fill_(4.0)  # scale 1/2
    cert = stability_certificate(conv, {"0.weight": torch.ones(4, 2, 3, 3, dtype=torch.bool)}, [torch.randn(4, 2, 5, 5)])
    expected = float((conv[0].weight.detach().abs().sum((1, 2, 3)) / (4.0 + 1e-5) ** 0.5).max())
    assert cert.layers[0].weight_norm == pytest.approx(expected, rel=1e-6)
    assert cert.layers[0].mask_norm == 0 and cert.layers[0].certified == 1.0

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.fc(x)

    with pytest.raises(CrispError, match="chain"):
        stability_certificate(Residual(), {}, [torch.randn(2, 4)])
