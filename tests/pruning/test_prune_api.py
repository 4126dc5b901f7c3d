"""crisp.prune end to end on a tiny CNN: schedule, pattern, determinism, input untouched,
shrink_head, callbacks, learned masks, and the compiled model equals the pruned one."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.gemm_view import weight_to_gemm
from conftest import assert_hybrid
from crisp.pruning.head import to_original_classes
from crisp.sparsity.pattern import Pattern
from crisp.pruning.prune import prune
from crisp.runtime.reference_kernel import reference_hybrid_sparse_gemm

PATTERN = Pattern(2, 4, 8)


class Tiny(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 16, 1, bias=False)  # K = 4 < block: stays dense
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)  # K = 144
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(128, classes)  # K = 128
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # depthwise: stays dense

    def forward(self, x):
        x = x + self.dw(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def make_model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().eval()


def make_data(n: int = 192, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 6, 6, generator=gen)
    teacher = torch.randn(4 * 36, 4, generator=gen)
    y = (x.flatten(1) @ teacher).argmax(1)
    return x, y


def batches(x, y, size=32):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def run(model=None, **kw):
    x, y = make_data()
    args = dict(classes=[0, 2], pattern=PATTERN, sparsity=0.85, steps=3, epochs_per_step=1,
                val_data=batches(*make_data(64, seed=7)), progress=False)
    args.update(kw)
    return prune(model if model is not None else make_model(), batches(x, y), **args)


@pytest.fixture(scope="module")
def crisp_run():
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    pruned, history = run(model)
    return model, before, pruned, history


def test_schedule_followed_and_final_sparsity_within_001(crisp_run):
    _, _, _, h = crisp_run
    assert [round(s.target_sparsity, 6) for s in h.steps] == [round(s, 6) for s in h.schedule]
    assert h.schedule[0] == pytest.approx(0.5) and h.schedule[-1] == pytest.approx(0.85)
    for s in h.steps:
        assert abs(s.achieved_sparsity - s.target_sparsity) <= 0.01, s
    assert abs(h.achieved_sparsity - 0.85) <= 0.01
    assert [s.step for s in h.steps] == [0, 1, 2, 3]
    assert all(0.0 <= s.accuracy <= 1.0 and s.accuracy_on == "val" for s in h.steps)


def test_final_masks_obey_the_hybrid_pattern_and_are_baked(crisp_run):
    _, _, pruned, h = crisp_run
    assert set(h.masks) == {"conv2.weight", "fc.weight"}  # conv1: K < block; dw: grouped
    assert set(h.dense_layers) == {"conv1", "dw"}
    params = dict(pruned.named_parameters())
    for name, mask in h.masks.items():
        assert_hybrid(weight_to_gemm(mask), PATTERN)
        assert not bool(params[name][~mask].any())  # pruned weights are zero in the result
        HybridSparseTensor.from_dense(params[name].detach(), mask, PATTERN)  # the format holds it
    assert not any(parametrize.is_parametrized(m) for m in pruned.modules())
    assert not pruned.training


def test_input_model_untouched(crisp_run):
    model, before, pruned, _ = crisp_run
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert pruned is not model


def test_same_seed_same_masks_and_accuracy(crisp_run):
    _, _, pruned, h = crisp_run
    pruned2, h2 = run()
    assert all(torch.equal(h.masks[n], h2.masks[n]) for n in h.masks)
    assert [s.accuracy for s in h.steps] == [s.accuracy for s in h2.steps]
    assert [s.loss for s in h.steps] == [s.loss for s in h2.steps]
    x, _ = make_data(16, seed=3)
    assert torch.equal(pruned(x), pruned2(x))


def test_masks_move_between_steps(crisp_run):
    _, _, _, h = crisp_run
    assert h.steps[0].mask_change == pytest.approx(h.steps[0].achieved_sparsity)  # from dense
    assert all(s.mask_change > 0 for s in h.steps[1:])


def lower_and_run(model: nn.Module, masks: dict, x: torch.Tensor) -> torch.Tensor:
    """Run `model` with every masked layer computed by the compact format + reference kernel."""
    model = copy.deepcopy(model)
    for name, mask in masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        hst = HybridSparseTensor.from_dense(module.weight.detach(), mask, PATTERN)
        bias = module.bias

        if isinstance(module, nn.Linear):
            def forward(inp, hst=hst, bias=bias):
                return reference_hybrid_sparse_gemm(inp, hst, bias)
        else:
            def forward(inp, hst=hst, bias=bias, m=module):
                n, cin, h, w = inp.shape
                kh, kw = m.kernel_size
                cols = F.unfold(inp, m.kernel_size, m.dilation, m.padding, m.stride)  # (cin, kh, kw)
                cols = cols.reshape(n, cin, kh * kw, -1).permute(0, 3, 2, 1).reshape(n, -1, kh * kw * cin)
                out = reference_hybrid_sparse_gemm(cols, hst, bias)  # [n, L, cout]
                oh = (h + 2 * m.padding[0] - m.dilation[0] * (kh - 1) - 1) // m.stride[0] + 1
                return out.permute(0, 2, 1).reshape(n, -1, oh, out.shape[1] // oh)
        module.forward = forward
    return model(x)


def test_compact_lowering_equals_the_pruned_model(crisp_run):
    _, _, pruned, h = crisp_run
    x, _ = make_data(8, seed=5)
    with torch.no_grad():
        assert torch.allclose(lower_and_run(pruned, h.masks, x), pruned(x), atol=1e-5, rtol=1e-4)


def test_crisp_compile_of_the_pruned_model_equals_it(crisp_run):
    crisp = pytest.importorskip("crisp")
    _, _, pruned, h = crisp_run
    x, _ = make_data(8, seed=5)
    keep = {n: m.float() for n, m in h.masks.items()}
    compiled = crisp.compile(pruned, (x,), pattern=PATTERN, sparsity=h.achieved_sparsity,
                             saliency=lambda gm: keep)
    for name, mask in h.masks.items():
        assert torch.equal(compiled.masks[name].bool(), mask)
    with torch.no_grad():
        assert torch.allclose(compiled(x), pruned(x), atol=1e-5, rtol=1e-4)


def test_shrink_head_outputs_user_classes_and_maps_back():
    x, y = make_data(64, seed=9)
    pruned, h = run(shrink_head=True, classes=[3, 1], steps=1, epochs_per_step=1)
    assert h.class_ids == (3, 1)
    out = pruned(x)
    assert out.shape == (64, 2)
    ids = to_original_classes(out, pruned)
    assert set(ids.tolist()) <= {1, 3}
    assert torch.equal(ids, torch.tensor([3, 1])[out.argmax(1)])


def test_callbacks_see_every_step_and_magnitude_saliency_runs():
    seen = []
    _, h = run(callbacks=seen.append, saliency="magnitude", steps=2, epochs_per_step=0, warmup_epochs=0)
    assert [r.step for r in seen] == [0, 1, 2] and seen == h.steps


def test_learned_masks_keep_the_pattern_and_leave_weights_frozen():
    model = make_model()
    pruned, h = run(model, method="learned", steps=1, epochs_per_step=1)
    assert abs(h.achieved_sparsity - 0.85) <= 0.01
    params, orig = dict(pruned.named_parameters()), dict(model.named_parameters())
    for name, mask in h.masks.items():
        assert_hybrid(weight_to_gemm(mask), PATTERN)
        assert torch.equal(params[name].detach(), orig[name].detach() * mask)  # weights frozen
    assert torch.equal(params["conv1.weight"], orig["conv1.weight"])


@pytest.mark.parametrize("method", ["crisp", "learned"])
def test_one_shot_schedule_goes_straight_to_the_target_with_hybrid_masks(method):
    """steps=0: one step to the target (no N:M-only step), the whole budget after it."""
    pruned, h = run(steps=0, epochs_per_step=2, method=method)
    assert h.schedule == [pytest.approx(0.85)]
    assert [s.step for s in h.steps] == [0] and h.steps[0].epochs == 2
    assert abs(h.achieved_sparsity - 0.85) <= 0.01
    for name, mask in h.masks.items():
        assert_hybrid(weight_to_gemm(mask), PATTERN)
    if method == "learned":  # a one-shot block cut trains the affine parameters as block steps do
        bn = dict(pruned.named_parameters())["bn1.weight"]
        assert not torch.equal(bn, make_model().bn1.weight)
