"""Class-aware Taylor saliency (Eq. 1) and magnitude saliency."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

import crisp
from crisp.sparsity.gemm_view import weight_to_gemm
from crisp.pruning.saliency import magnitude_saliency, taylor_saliency
from crisp.sparsity.selection import select_hybrid_masks


def model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 16, 4),
    ).eval()


def batches(n_batches=3, size=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 4, 4, generator=gen), torch.randint(0, 4, (size,), generator=gen)) for _ in range(n_batches)]


def manual_taylor(m, data, classes):
    sums = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1}
    count = 0
    for x, y in data:
        keep = torch.isin(y, torch.tensor(classes))
        if not keep.any():
            continue
        m.zero_grad()
        F.cross_entropy(m(x[keep]), y[keep]).backward()
        for n, p in m.named_parameters():
            if n in sums:
                sums[n] += p.grad.double() * p.detach().double()
        count += 1
    return {n: (s / count).abs().float() for n, s in sums.items()}


def test_taylor_is_abs_of_mean_over_batches_of_grad_times_weight_on_user_classes():
    m, data, classes = model(), batches(), [1, 3]
    got = taylor_saliency(m, data, classes)
    want = manual_taylor(copy.deepcopy(m), data, classes)
    assert set(got) == {"0.weight", "4.weight"}
    for n in want:
        assert got[n].shape == want[n].shape
        assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-9)
    # mean of the product, then abs: not the mean of absolute values
    assert not torch.allclose(got["4.weight"], manual_abs_mean(copy.deepcopy(m), data, classes)["4.weight"])


def manual_abs_mean(m, data, classes):
    out = {}
    for x, y in data:
        keep = torch.isin(y, torch.tensor(classes))
        m.zero_grad()
        F.cross_entropy(m(x[keep]), y[keep]).backward()
        for n, p in m.named_parameters():
            if n.endswith("weight") and p.dim() > 1:
                out[n] = out.get(n, 0) + (p.grad * p.detach()).abs() / len(data)
    return out


def test_samples_of_other_classes_do_not_count_and_the_model_is_untouched():
    m = model()
    state = copy.deepcopy(m.state_dict())
    data = batches()
    classes = [0, 2]
    base = taylor_saliency(m, data, classes)
    gen = torch.Generator().manual_seed(5)
    noisy = []
    for x, y in data:  # add samples of classes 1 and 3 to every batch
        extra = torch.randn(6, 3, 4, 4, generator=gen) * 10
        noisy.append((torch.cat([x, extra]), torch.cat([y, torch.tensor([1, 3] * 3)])))
    again = taylor_saliency(m, noisy, classes)
    assert all(torch.allclose(base[n], again[n], rtol=1e-5, atol=1e-9) for n in base)
    other = taylor_saliency(m, data, [1, 3])
    assert not torch.allclose(base["4.weight"], other["4.weight"])  # class-aware
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters()) and not m.training


def test_fine_tuning_saliency_changes_a_copy_only_and_is_deterministic():
    m = model()
    state = copy.deepcopy(m.state_dict())
    a = taylor_saliency(m, batches(), [0, 1], lr=0.1, epochs=2, seed=3)
    b = taylor_saliency(m, batches(), [0, 1], lr=0.1, epochs=2, seed=3)
    still = taylor_saliency(m, batches(), [0, 1])
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.allclose(a["4.weight"], still["4.weight"])
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def test_magnitude_saliency_is_abs_weight():
    m = model()
    sal = magnitude_saliency(m)
    assert torch.equal(sal["4.weight"], m[4].weight.detach().abs())
    assert set(sal) == {"0.weight", "4.weight"}


def test_compile_with_taylor_uses_the_same_saliency():
    m, data, classes = model(), batches(), [1, 3]
    x = torch.randn(2, 3, 4, 4)
    compiled = crisp.compile(m, (x,), pattern="2:4", block=8, sparsity=0.7, saliency="taylor",
                             calibration=data, classes=classes)
    sal = taylor_saliency(m, data, classes)
    expected = select_hybrid_masks({"0.weight": weight_to_gemm(sal["0.weight"]), "4.weight": weight_to_gemm(sal["4.weight"])},
                                   crisp.Pattern(2, 4, 8), 0.7)
    mask = compiled.masks["4.weight"].bool()
    assert torch.equal(weight_to_gemm(mask), expected.layers["4.weight"].mask)


def test_one_magnitude_saliency_for_the_pass_and_the_api():
    import crisp
    from crisp.passes import ComputeSaliency, magnitude_saliency as pass_magnitude

    assert pass_magnitude is crisp.magnitude_saliency
    assert ComputeSaliency("magnitude").fn is None  # the pass scores the prunable layers with that one function
