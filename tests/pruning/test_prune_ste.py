"""The straight-through estimator: forward uses W * mask, pruned weights get the dense gradient."""

import torch
from torch import nn
from torch.nn.utils import parametrize

from crisp.pruning.ste import bake_masks, latent_weight, set_ste_masks, ste_mask


def test_forward_masks_and_backward_is_dense():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 8, generator=gen, requires_grad=True)
    mask = torch.rand(6, 8, generator=gen) > 0.5
    x = torch.randn(5, 8, generator=gen)
    out = x @ ste_mask(w, mask).T
    assert torch.equal(out, x @ (w * mask).T)
    upstream = torch.randn(5, 6, generator=gen)
    out.backward(upstream)
    # dL/dW of the masked layer, evaluated at W*mask, delivered to every entry
    dense = upstream.T @ x
    assert torch.allclose(w.grad, dense)
    assert bool((w.grad[~mask] != 0).all())


def test_pruned_weights_of_a_masked_conv_receive_nonzero_gradients_and_move():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 3))
    mask = torch.rand(conv.weight.shape) > 0.5
    set_ste_masks(model, {"0.weight": mask})
    w = latent_weight(model, "0.weight")
    before = w.detach().clone()
    # forward uses the masked weight
    assert torch.equal(conv.weight, before * mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4, 4, 4), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    assert float(w.grad[~mask].abs().sum()) > 0
    opt.step()
    assert not torch.equal(w.detach()[~mask], before[~mask])  # pruned weights can grow back

    # replacing the mask reuses the parametrization; baking leaves W * mask as a plain parameter
    new_mask = ~mask
    set_ste_masks(model, {"0.weight": new_mask})
    expected = latent_weight(model, "0.weight").detach() * new_mask
    bake_masks(model)
    assert not parametrize.is_parametrized(conv)
    assert torch.equal(conv.weight.detach(), expected)
    assert isinstance(conv.weight, nn.Parameter)
