"""crisp.compile and calls of a compiled model: bad arguments raise a CrispError naming the argument,
layer or input, before any work, and the caller's model and tensors are never changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import crisp
from crisp.validate import ArgumentError


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 32))


X = torch.randn(1, 32, 4, 4)


@pytest.mark.parametrize("kwargs, words", [
    (dict(sparsty=0.5), ["sparsty", "sparsity"]),
    (dict(blocks=64), ["blocks", "block"]),
    (dict(target="crisp-stc", trace_pth="t"), ["trace_pth", "trace_path"]),
    (dict(seed="abc"), ["seed"]),
    (dict(seed=None), ["seed"]),
    (dict(seed=2**70), ["seed"]),
    (dict(verify="yes"), ["verify"]),
])
def test_bad_keywords(kwargs, words):
    with pytest.raises(ArgumentError) as exc:
        crisp.compile(small(), (X,), **kwargs)
    assert all(w in str(exc.value) for w in words)


@pytest.mark.parametrize("exclude", [None, ["nope"], [3], "nope"])
def test_bad_exclude(exclude):
    with pytest.raises(crisp.ModelError, match="exclude"):
        crisp.compile(small(), (X,), exclude=exclude)


def test_exclude_accepts_globs():
    c = crisp.compile(small(), (X,), exclude=["*3"], target="reference")
    assert {r.name: r.pruned for r in c.report.rows} == {"0": True, "3": False}


def test_target_must_be_a_name():
    with pytest.raises(crisp.UnknownTargetError, match="target"):
        crisp.compile(small(), (X,), target=["cpu"])


class Mutates(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 3)

    def forward(self, x):
        x.mul_(2)
        return self.conv(x)


def test_forward_that_mutates_its_input_leaves_callers_tensor_alone():
    x = torch.ones(1, 32, 4, 4)
    c = crisp.compile(Mutates(), (x,), target="reference")
    assert torch.equal(x, torch.ones(1, 32, 4, 4))
    assert c.report.relative_error <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_models_are_refused_up_front(dtype):
    with pytest.raises(crisp.ModelError, match="float32") as exc:
        crisp.compile(small().to(dtype), (X.to(dtype),))
    assert "crisp bug" not in str(exc.value) and "model.float()" in str(exc.value)


def test_example_input_of_wrong_dtype_names_the_cause():
    with pytest.raises(crisp.ModelError, match="example input 0 is float64 but the model's weights are float32"):
        crisp.compile(small(), (X.double(),))


def test_shape_error_shows_the_real_cause():
    with pytest.raises(crisp.ModelError) as exc:
        crisp.compile(small(), (torch.randn(1, 16, 4, 4),))
    assert "ShapeProp error" not in str(exc.value) and "channels" in str(exc.value)


def _weight_norm_old():
    return nn.Sequential(nn.utils.weight_norm(nn.Conv2d(32, 32, 3)))


def _lazy():
    return nn.Sequential(nn.LazyConv2d(32, 3))


@pytest.mark.parametrize("build, words", [
    (lambda: small().to("meta"), "meta device"),
    (_lazy, "uninitialized"),
    (_weight_norm_old, "remove_weight_norm"),
    (lambda: nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(32, 32, 3))), "remove_spectral_norm"),
    (lambda: nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(32, 32, 3))), "remove_parametrizations"),
])
def test_models_crisp_cannot_copy_or_prune(build, words):
    with pytest.warns() if build is _weight_norm_old else _nothing():
        model = build()
    with pytest.raises(crisp.ModelError, match=words) as exc:
        crisp.compile(model, (X,))
    assert "layer '0'" in str(exc.value)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_meta_input_is_refused():
    with pytest.raises(crisp.ModelError, match="meta"):
        crisp.compile(small(), (X.to("meta"),))


def test_tied_weights_stay_dense_with_reason():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    c = crisp.compile(Tied(), (torch.randn(1, 32),), target="reference")
    assert all(not r.pruned and "shared" in r.reason for r in c.report.rows)


@pytest.mark.parametrize("saliency, words", [
    (lambda m: [1.0], "must return a dict"),
    (lambda m: {"0.weight": [1.0], "3.weight": [1.0]}, "must be a tensor"),
])
def test_saliency_callable_returning_junk(saliency, words):
    with pytest.raises(crisp.ModelError, match=words):
        crisp.compile(small(), (X,), saliency=saliency)


def test_apply_masks_wrong_shape():
    with pytest.raises(crisp.ModelError, match=r"0\.weight.*\[32, 32, 3, 3\]"):
        crisp.apply_masks(small(), {"0.weight": torch.ones(3, dtype=torch.bool)})


@pytest.fixture(scope="module")
def compiled():
    return crisp.compile(small(), (X,))


@pytest.mark.parametrize("arg, words", [
    (X.double(), "float64"),
    (torch.randn(1, 16, 4, 4), "shape [1, 16, 4, 4]"),
    (torch.randn(32, 4, 4), "shape [32, 4, 4]"),
    (torch.randn(1, 32, 5, 5), "shape [1, 32, 5, 5]"),
    ([X], "must be a torch.Tensor"),
])
def test_compiled_call_guard(compiled, arg, words):
    with pytest.raises(crisp.ModelError, match="input 0") as exc:
        compiled(arg)
    assert words in str(exc.value)


def test_compiled_call_any_batch(compiled):
    assert compiled(torch.randn(3, 32, 4, 4)).shape == (3, 32)


def test_compiled_call_by_keyword(compiled):
    name = next(n.target for n in compiled.graph_module.graph.nodes if n.op == "placeholder")
    assert torch.equal(compiled(**{name: X}), compiled(X))
    with pytest.raises(crisp.ModelError, match=f"takes the inputs \\({name}\\).*unexpected keyword argument 'y'"):
        compiled(X, y=X)
    with pytest.raises(crisp.ModelError, match="float64"):  # keyword inputs are checked like positional ones
        compiled(**{name: X.double()})


@pytest.mark.parametrize("sparsity", ["0.9", b"0.9", True, None, [0.9], torch.tensor(0.9)])
def test_sparsity_must_be_a_number(sparsity):
    with pytest.raises(crisp.PatternError, match="sparsity must be a number"):
        crisp.compile(small(), (X,), sparsity=sparsity)


def test_inputs_that_do_not_fit_name_the_node_and_print_no_traceback(capfd):
    with pytest.raises(crisp.ModelError, match="node '_0'.*do not fit|do not fit.*node '_0'"):
        crisp.compile(small(), (3,))
    assert "Traceback" not in capfd.readouterr().err
