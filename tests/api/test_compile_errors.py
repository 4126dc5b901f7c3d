"""Bad input gets a crisp exception that names the problem and the layer."""

import pytest
import torch
from torch import nn

import crisp
from crisp.errors import CrispError, ModelError, PatternError, TraceError, UnknownTargetError


@pytest.mark.parametrize("kwargs,match", [
    (dict(pattern="5:4"), "n must be <= m"),
    (dict(pattern="0:4"), "n must be >= 1"),
    (dict(pattern="2:4", block=30), "multiple of m=4"),
    (dict(pattern="2:4", sparsity=0.4), "below what 2:4 alone gives"),
    (dict(pattern="2:4", sparsity=1.0), "below 1"),
])
def test_bad_pattern_or_sparsity(small_cnn, kwargs, match):
    with pytest.raises(PatternError, match=match):
        crisp.compile(*small_cnn, **kwargs)


def test_wrong_input_shape_names_the_node(small_cnn):
    model, _ = small_cnn
    with pytest.raises(ModelError, match=r"node 'conv1'.*shape \[\(2, 3, 8, 8\)\]"):
        crisp.compile(model, torch.randn(2, 3, 8, 8))


def test_wrong_number_of_inputs(small_cnn):
    model, x = small_cnn
    with pytest.raises(ModelError, match="takes 1 input"):
        crisp.compile(model, (x, x))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)

    def forward(self, x):
        if x.sum() > 0:  # control flow on data: torch.fx cannot trace this
            return self.conv(x)
        return -self.conv(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(4, 4, 1)
        self.body = DataDependent()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def test_untraceable_module_is_named_with_a_way_out():
    model = Net().eval()
    x = torch.randn(1, 4, 9, 9)
    with pytest.raises(TraceError, match=r"module 'body' \(DataDependent\).*exclude=\['body'\]"):
        crisp.compile(model, x, pattern="2:4", block=4, sparsity=0.6)
    compiled = crisp.compile(model, x, pattern="2:4", block=4, sparsity=0.6, exclude=["body"])
    rows = {r.name: r for r in compiled.report.rows}
    assert not rows["body.conv"].pruned and rows["fc"].pruned
    assert torch.allclose(compiled(x), crisp.apply_masks(model, compiled.masks)(x), rtol=1e-4, atol=1e-6)


def test_nan_or_inf_weights_name_the_layer(small_cnn):
    model, x = small_cnn
    bad = crisp.models.build("small_cnn")
    with torch.no_grad():
        bad.conv3.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ModelError, match="layer 'conv3' has NaN or Inf"):
        crisp.compile(bad, x)
    with torch.no_grad():
        bad.conv3.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ModelError, match="conv3"):
        crisp.compile(bad, x)


def test_unknown_target_lists_registered(small_cnn):
    with pytest.raises(UnknownTargetError, match="registered targets: .*reference"):
        crisp.compile(*small_cnn, target="tpu")


def test_unknown_exclude_name_suggests_close_match(small_cnn):
    with pytest.raises(ModelError, match="'conv33'.*did you mean 'conv3'"):
        crisp.compile(*small_cnn, exclude=["conv33"])


def test_not_a_module_and_bad_inputs():
    with pytest.raises(ModelError, match="nn.Module"):
        crisp.compile(lambda x: x, torch.randn(1))
    with pytest.raises(ModelError, match="example_inputs"):
        crisp.compile(crisp.models.build("small_cnn"), ())


def test_all_errors_are_crisp_errors():
    for cls in (ModelError, PatternError, TraceError, UnknownTargetError):
        assert issubclass(cls, CrispError)
