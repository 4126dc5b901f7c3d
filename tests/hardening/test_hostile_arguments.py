"""Property test: random hostile arguments (wrong types, NaN/Inf, huge, negative, empty) thrown at
compile, prune, optimize_onnx, simulate and load_arch give a correct result or a CrispError, never
a raw exception from deep inside."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import crisp
from crisp.errors import CrispError
from crisp.runtime.simulator.arch_io import arch_from_dict, load_arch

HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**80, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.sampled_from(["", "2:4", "nope", "*"]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3), st.just({}), st.just(object()),
    st.just(torch.tensor([float("nan")])),
)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 4))


X = torch.randn(1, 32, 4, 4)
COMPILE_ARGS = ["pattern", "block", "sparsity", "seed", "exclude", "leaf_modules", "saliency", "target", "verify",
                "keep_saliency", "progress", "allocation", "calibration", "classes", "fuse_activations"]


def _only_crisp_errors(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except CrispError:
            pass


@FAST
@given(name=st.sampled_from(COMPILE_ARGS), value=HOSTILE)
def test_compile(name, value):
    kwargs = {"target": "reference", name: value}
    _only_crisp_errors(lambda: crisp.compile(_model(), (X,), **kwargs))


@FAST
@given(value=HOSTILE)
def test_compile_example_inputs_and_model(value):
    _only_crisp_errors(lambda: crisp.compile(_model(), value))
    _only_crisp_errors(lambda: crisp.compile(value, (X,)))


@pytest.fixture(scope="module")
def compiled():
    return crisp.compile(_model(), (X,))


@FAST
@given(value=HOSTILE)
def test_compiled_call(compiled, value):
    _only_crisp_errors(lambda: compiled(value))


DATA = [(torch.randn(4, 32, 4, 4), torch.tensor([0, 1, 0, 1]))]
PRUNE_ARGS = ["classes", "pattern", "block", "sparsity", "steps", "epochs_per_step", "saliency", "method", "seed",
              "callbacks", "shrink_head", "warmup_epochs", "lr", "momentum", "weight_decay", "exclude", "progress",
              "train_data"]


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(name=st.sampled_from(PRUNE_ARGS), value=HOSTILE)
def test_prune(name, value):
    kwargs = dict(classes=[0, 1], steps=1, epochs_per_step=0, warmup_epochs=0, saliency="magnitude", progress=False)
    kwargs[name] = value
    data = kwargs.pop("train_data", DATA)
    _only_crisp_errors(lambda: crisp.prune(_model(), data, **kwargs))


def _onnx_model():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(name=st.sampled_from(["pattern", "block", "sparsity", "format", "exclude", "saliency", "model"]),
       value=HOSTILE)
def test_optimize_onnx(name, value):
    kwargs = dict(pattern="2:4", block=32, sparsity=0.6)
    kwargs[name] = value
    model = kwargs.pop("model", None) or _onnx_model()
    _only_crisp_errors(lambda: crisp.optimize_onnx(model, **kwargs))


@FAST
@given(source=HOSTILE, arch=st.one_of(HOSTILE, st.sampled_from(["tc", "dstc", "x.toml"])))
def test_simulate(compiled, source, arch):
    _only_crisp_errors(lambda: crisp.simulate(source, "tc"))
    _only_crisp_errors(lambda: crisp.simulate(compiled, arch))


ARCH_FIELDS = ["name", "dataflow", "n_cores", "macs_per_core", "rf_bytes", "smem_bytes", "smem_read_bw", "dram_read_bw",
               "patterns", "block_skipping", "core_rows", "activation_density", "gather_lanes", "word_bytes",
               "clock_ghz", "energy", "base", "description"]
JSONABLE = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=5), st.lists(st.integers(-2, 5), max_size=2),
                     st.dictionaries(st.sampled_from(["mac", "dram_per_byte", "smem_row_bytes", "name", "x"]),
                                     st.one_of(st.floats(allow_nan=True), st.integers(-2**70, 2**70), st.text(max_size=2)),
                                     max_size=2))


@FAST
@given(name=st.sampled_from(ARCH_FIELDS), value=JSONABLE)
def test_load_arch(tmp_path_factory, name, value):
    data = {"base": "crisp-stc", name: value}
    _only_crisp_errors(lambda: arch_from_dict(data))
    f = tmp_path_factory.mktemp("arch") / "a.json"
    f.write_text(json.dumps(data))
    _only_crisp_errors(lambda: crisp.simulate(crisp.runtime.simulator.load_arch(f) and [], "tc"))
    _only_crisp_errors(lambda: load_arch(f))
