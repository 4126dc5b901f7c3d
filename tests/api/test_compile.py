"""crisp.compile end to end: equivalence with the masked dense model, pattern invariants,
the user's model untouched, determinism, and the per-layer report."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import crisp
from crisp.sparsity.masking import relative_error
from crisp.sparsity.pattern_check import hybrid_violation


def compile_and_check(name, shape, pattern, block, sparsity, check_shape=None, **kw):
    model = crisp.models.build(name)
    before = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    compiled = crisp.compile(model, (x,), pattern=pattern, block=block, sparsity=sparsity, **kw)
    # the user's model is untouched
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training  # build() returns eval mode and compile must not change it
    # equivalence on a fresh input with another batch size
    x2 = torch.randn(*(check_shape or shape), generator=gen)
    with torch.no_grad():
        expected = crisp.apply_masks(model, compiled.masks)(x2)
    assert relative_error(compiled(x2), expected) <= 1e-4
    # every mask obeys the pattern
    p = crisp.Pattern.parse(pattern, block)
    params = dict(model.named_parameters())
    for pname, mask in compiled.masks.items():
        assert mask.dtype == torch.bool and mask.shape == params[pname].shape
        assert hybrid_violation(mask, p) is None, pname
    return model, compiled


@pytest.mark.parametrize("pattern,block,sparsity", [("2:4", 16, 0.5), ("1:4", 16, 0.8), ("3:4", 32, 0.9), ("2:4", 64, 0.95)])
def test_small_cnn(pattern, block, sparsity):
    model, compiled = compile_and_check("small_cnn", (4, 1, 8, 8), pattern, block, sparsity, check_shape=(3, 1, 8, 8))
    report = compiled.report
    assert report.target_sparsity == sparsity
    # the sparsity the report claims is the masks' real sparsity
    total = sum(m.numel() for m in compiled.masks.values())
    kept = sum(int(m.sum()) for m in compiled.masks.values())
    assert report.achieved_sparsity == pytest.approx(1 - kept / total)
    assert {r.name for r in report.rows} == {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_resnet50_2of4_blocks32_at_90():
    model, compiled = compile_and_check("resnet50", (2, 3, 64, 64), "2:4", 32, 0.9, check_shape=(3, 3, 64, 64))
    assert abs(compiled.report.achieved_sparsity - 0.9) <= 0.01
    assert len(compiled.masks) == 54  # 53 convs + fc, all prunable
    rows = {r.name: r for r in compiled.report.rows}
    assert rows["layer1.0.conv2"].kind == "conv3x3" and rows["layer1.0.conv2"].pruned
    # BatchNorm after pruned convs was folded: no BatchNorm left in the lowered graph
    assert not any(isinstance(m, nn.BatchNorm2d) for m in compiled.graph_module.modules())
    # MACs kept are kept weights x output positions
    info = next(i for i in compiled.layers if i.name == "layer2.0.conv2")
    assert info.macs_kept == int(info.mask.sum()) * info.out_positions
    # same seed, same masks
    again = crisp.compile(model, (torch.randn(1, 3, 64, 64),), pattern="2:4", block=32, sparsity=0.9)
    assert all(torch.equal(compiled.masks[k], again.masks[k]) for k in compiled.masks)


def test_mobilenet_v2_3of4_blocks64_depthwise_stays_dense():
    model, compiled = compile_and_check("mobilenet_v2", (1, 3, 64, 64), "3:4", 64, 0.8, check_shape=(2, 3, 64, 64))
    rows = {r.name: r for r in compiled.report.rows}
    dw = rows["features.1.conv.0.0"]
    assert not dw.pruned and "depthwise" in dw.reason
    first = rows["features.0.0"]  # K = 3*3*3 = 27 < 64
    assert not first.pruned and "smaller than one block" in first.reason
    assert abs(compiled.report.achieved_sparsity - 0.8) <= 0.01


def test_vgg16_1of4_blocks16_at_95():
    _, compiled = compile_and_check("vgg16", (1, 3, 32, 32), "1:4", 16, 0.95)
    assert abs(compiled.report.achieved_sparsity - 0.95) <= 0.01
    assert compiled.report.rows[-1].name == "classifier.6"


def test_exclude_keeps_layers_dense_and_reports_why():
    model = crisp.models.build("small_cnn")
    x = torch.randn(2, 1, 8, 8)
    compiled = crisp.compile(model, (x,), pattern="2:4", block=16, sparsity=0.8, exclude=["fc2", "conv4"])
    rows = {r.name: r for r in compiled.report.rows}
    assert not rows["fc2"].pruned and "excluded" in rows["fc2"].reason
    assert not rows["conv4"].pruned and "excluded" in rows["conv4"].reason
    assert "fc2.weight" not in compiled.masks and "conv3.weight" in compiled.masks
    assert relative_error(compiled(x), crisp.apply_masks(model, compiled.masks)(x)) <= 1e-4


def test_excluding_a_container_reports_the_layers_inside():
    model = crisp.models.build("resnet18")
    compiled = crisp.compile(model, (torch.randn(1, 3, 64, 64),), sparsity=0.9, exclude=["layer4"])
    rows = {r.name: r for r in compiled.report.rows}
    assert not rows["layer4.0.conv1"].pruned and "layer4" in rows["layer4.0.conv1"].reason
    assert rows["layer3.0.conv1"].pruned
    assert len(rows) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def test_conv_variants_stride_padding_dilation_bias():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 16, (3, 5), stride=(2, 1), padding=(2, 1), dilation=(2, 1), bias=True)
            self.b = nn.Conv2d(16, 24, 1, stride=2)
            self.c = nn.Conv2d(24, 32, 3, padding="same")
            self.fc = nn.Linear(32, 7)

        def forward(self, x):
            x = torch.relu(self.b(torch.relu(self.a(x))))
            return self.fc(self.c(x).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 8, 17, 13)
    compiled = crisp.compile(model, (x,), pattern="2:4", block=8, sparsity=0.8)
    assert set(compiled.masks) == {"a.weight", "b.weight", "c.weight", "fc.weight"}
    assert relative_error(compiled(x), crisp.apply_masks(model, compiled.masks)(x)) <= 1e-4


def _held_bytes(compiled) -> int:
    """Bytes of every distinct tensor storage a CompiledModel keeps alive (modules, graphs, layer infos)."""
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for module in (compiled.module, compiled.graph_module):
        for t in list(module.parameters()) + list(module.buffers()):
            add(t)
    for info in compiled.layers:
        add(info.saliency)
        add(info.mask)
        if info.compact is not None:
            for t in vars(info.compact).values():
                add(t)
    return sum(seen.values())


def test_compiled_model_holds_less_than_the_dense_model():
    """Saliency (as large as the dense weights) is dropped after selection unless asked for."""
    model = crisp.models.build("resnet50")
    x = torch.randn(1, 3, 64, 64)
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    compiled = crisp.compile(model, (x,), pattern="2:4", block=32, sparsity=0.9, verify=False)
    assert all(info.saliency is None for info in compiled.layers)
    assert _held_bytes(compiled) < 0.75 * dense
    kept = crisp.compile(model, (x,), pattern="2:4", block=32, sparsity=0.9, verify=False, keep_saliency=True)
    assert all(info.saliency is not None and info.saliency.shape == info.weight_shape for info in kept.layers if info.prunable)
    assert _held_bytes(kept) > dense
