"""The ``cpu`` target: fused fast ops replace every lowered layer, on a copy of the lowered graph,
and whole models equal the masked dense model."""

from __future__ import annotations

import pytest
import torch

import crisp
from crisp import models
from crisp.backends.cpu import cpu_pipeline
from crisp.runtime import cpu_capability as isa
from crisp.runtime import dense_path, fast_kernel
from conftest import max_relative_error

pytestmark = pytest.mark.skipif(not fast_kernel.available(), reason=f"fast kernels unavailable: {fast_kernel.unavailable_reason()}")

GEMM = torch.ops.crisp.hybrid_sparse_gemm.default
PATHS = [c for c in isa.CAPABILITIES if c in isa.supported() and fast_kernel.available(c)]
FAST = tuple(fast_kernel.op(name, path) for path in PATHS
             for name in ("hybrid_sparse_conv2d_fast", "hybrid_sparse_conv2d_nhwc", "hybrid_sparse_linear_fast",
                          "dense_conv2d_nhwc"))  # the last: crisp's dense "gemm" kernel, where it measured fastest
DENSE_PATH = (dense_path.conv2d, dense_path.linear)  # torch's own conv / linear, where it measured fastest


def targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_small_cnn_graph_is_rewritten_on_a_copy():
    model = models.build("small_cnn")
    x = torch.randn(3, 1, 8, 8)
    compiled = crisp.compile(model, (x,), target="cpu", sparsity=0.8, block=16, verify=False)
    lowered, fused = compiled.graph_module, compiled.module
    pruned = [info.name for info in compiled.layers if info.compact is not None]
    assert pruned and sorted(compiled.artifacts["fused"]) == sorted(pruned)
    # the lowered graph is untouched: still the unfold + reference gemm form, compact buffers in place
    assert targets(lowered).count(GEMM) == len(pruned)
    assert any(name.endswith(".offsets") for name, _ in lowered.named_buffers())
    # the fused copy: one fast op (or, where it measured fastest, torch's own conv / linear) per
    # layer, no unfold, no reference gemm, no compact buffers
    fast = [t for t in targets(fused) if t in FAST]
    torch_dense = [t for t in targets(fused) if t in DENSE_PATH]
    dense = [info.name for info in compiled.layers if info.compact is None]  # e.g. a first conv with K < block
    assert sorted(d.split("+")[0] for d in compiled.artifacts["dense_convs"]) == sorted(dense)
    choices = compiled.artifacts["kernel_choices"]
    assert sorted(choices) == sorted(pruned + dense)
    assert len(torch_dense) == sum(c["kernel"] == "dense" for c in choices.values())
    assert len(fast) + len(torch_dense) == len(pruned) + len(dense)
    assert GEMM not in targets(fused) and torch.nn.functional.unfold not in targets(fused)
    assert not any(name.endswith((".offsets", ".block_cols", ".values")) for name, _ in fused.named_buffers())
    with torch.no_grad():
        want = crisp.apply_masks(model, compiled.masks)(x)
        assert max_relative_error(compiled(x), want) <= 1e-4
        assert max_relative_error(compiled(x), lowered(x)) <= 1e-5
        # the batch size stays free
        x5 = torch.randn(5, 1, 8, 8)
        assert max_relative_error(compiled(x5), crisp.apply_masks(model, compiled.masks)(x5)) <= 1e-4


def test_packed_weights_are_smaller_than_dense(monkeypatch):
    monkeypatch.setenv("CRISP_CPU_TUNE", "0")  # every pruned layer on crisp's kernels (no measured choice of dense)
    model = models.build("small_cnn")
    compiled = crisp.compile(model, (torch.randn(1, 1, 8, 8),), target="cpu", sparsity=0.9, block=16, verify=False)
    dense_bytes = sum(model.get_parameter(name).numel() * 4 for name in compiled.masks)
    assert 0 < compiled.artifacts["packed_weight_bytes"] < dense_bytes


MODELS = {
    "resnet50": ({}, ("conv+bias+relu", "conv+bias+residual+relu", "linear+bias")),
    "mobilenet_v2": ({}, ("conv+bias+relu6", "conv+bias+residual", "linear+bias")),  # + folded depthwise BNs
    "vgg16": ({"exclude": ("classifier",)}, ("conv+bias+relu",)),
}


@pytest.fixture(scope="module")
def compiled_models():
    """Each model pruned and compiled once (on the best path); the tests lower it again per path."""
    done = {}
    for name, (kwargs, _) in MODELS.items():
        torch.manual_seed(0)
        model = models.build(name)
        x = torch.randn(2, 3, 32, 32)
        done[name] = (model, x, crisp.compile(model, (x,), target="cpu", pattern="2:4", block=32, sparsity=0.9,
                                              verify=False, **kwargs))
    return done


def on_path(compiled, path: str) -> torch.fx.GraphModule:
    """The cpu pipeline run again on the compiled model's lowered graph with ``path`` forced."""
    with isa.forced(path):
        return cpu_pipeline()(compiled.graph_module).graph_module


@pytest.mark.parametrize("name", MODELS)
def test_whole_model_equals_masked_dense(name, compiled_models):
    model, x, compiled = compiled_models[name]
    assert compiled.artifacts["cpu_kernels"] == "fast" and compiled.artifacts["cpu_isa"] == fast_kernel.cpu_capability()
    kinds = {description.split(" [")[0] for description in compiled.artifacts["fused"].values()}
    for fusion in MODELS[name][1]:
        assert fusion in kinds, (fusion, kinds)
    if name == "mobilenet_v2":  # its depthwise convs stay dense; their BatchNorms are folded
        assert len(compiled.artifacts["folded_batchnorms"]) >= 17  # one per inverted-residual block
        depthwise = [d for d in compiled.artifacts["dense_convs"] if d.endswith("conv.1.0+relu6")]
        assert len(depthwise) == 16  # every depthwise conv but the first block's, with its ReLU6
        assert not any(isinstance(m, torch.nn.Conv2d) for m in compiled.module.modules())
    if name == "resnet50":  # its pools run on crisp's threads too
        assert compiled.artifacts["lowered_pools"] == ["maxpool", "avgpool"]
    with torch.no_grad():
        want = crisp.apply_masks(model, compiled.masks)(x)
        got = compiled(x)
    assert max_relative_error(got, want) <= 1e-4


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MODELS)
def test_whole_model_equals_masked_dense_on_every_path(name, path, compiled_models):
    """ResNet-50, MobileNetV2 and VGG-16 lowered for each ISA path call only that path's ops and
    equal the masked dense model."""
    model, x, compiled = compiled_models[name]
    gm = on_path(compiled, path)
    namespaces = {str(t.namespace) for t in targets(gm) if hasattr(t, "namespace")}
    assert f"crisp_{path}" in namespaces and not namespaces & {f"crisp_{c}" for c in isa.CAPABILITIES if c != path}
    with torch.no_grad():
        want = crisp.apply_masks(model, compiled.masks)(x)
        assert max_relative_error(gm(x), want) <= 1e-4


class GroupedDepthwiseNet(torch.nn.Module):
    """A torchvision-style net (ResNeXt / MobileNet blocks): grouped and depthwise convs stay dense
    beside the pruned pointwise and full convs, BatchNorms everywhere."""

    def __init__(self):
        super().__init__()
        bn = torch.nn.BatchNorm2d
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 2, 1, bias=False), bn(32), torch.nn.ReLU())
        self.reduce = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 1, bias=False), bn(64), torch.nn.ReLU())
        self.grouped = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, 1, 1, groups=8, bias=False), bn(64), torch.nn.ReLU())
        self.expand = torch.nn.Sequential(torch.nn.Conv2d(64, 32, 1, bias=False), bn(32))
        self.depthwise = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=False), bn(32), torch.nn.ReLU6())
        self.full = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 3, 1, 1), bn(64), torch.nn.ReLU())
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(self.expand(self.grouped(self.reduce(y))) + y)
        y = self.full(self.depthwise(y))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.mark.parametrize("path", PATHS)
def test_grouped_and_depthwise_model_equals_masked_dense(path):
    torch.manual_seed(0)
    model = GroupedDepthwiseNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, so folding is checked
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 20, 20)
    with isa.forced(path):
        compiled = crisp.compile(model, (x,), target="cpu", pattern="2:4", block=16, sparsity=0.8, verify=False)
    assert compiled.artifacts["cpu_isa"] == path
    assert {"reduce.0", "expand.0", "full.0", "fc"} <= set(compiled.artifacts["fused"])
    with torch.no_grad():
        assert max_relative_error(compiled(x), crisp.apply_masks(model, compiled.masks)(x)) <= 1e-4


class FusionZoo(torch.nn.Module):
    """Patterns the backend must fuse, and one it must not (an in-place add into a live tensor)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 32, 1)
        self.conv3 = torch.nn.Conv2d(32, 32, 3, stride=1, padding=2, dilation=2)
        self.act = torch.nn.ReLU6()

    def forward(self, x):
        y = self.act(self.conv1(x))  # conv + ReLU6 module
        z = self.conv2(y)
        z += y  # in-place add into the conv output: fusable residual
        out = torch.relu(z)
        w = self.conv3(out)
        out2 = out.add_(w)  # in-place add into `out`, which is used again below: must stay
        return out2 * 2 + out


def test_fusion_rules_keep_semantics():
    torch.manual_seed(0)
    model = FusionZoo().eval()
    x = torch.randn(2, 16, 12, 12)
    compiled = crisp.compile(model, (x,), target="cpu", sparsity=0.8, block=16, verify=False)
    fused = {name: d.split(" [")[0] for name, d in compiled.artifacts["fused"].items()}
    assert fused == {"conv1": "conv+bias+relu6", "conv2": "conv+bias+residual+relu", "conv3": "conv+bias"}
    with torch.no_grad():
        want = crisp.apply_masks(model, compiled.masks)(x.clone())
        assert max_relative_error(compiled(x.clone()), want) <= 1e-4


def test_bench_command_prints_tables_and_writes_json(tmp_path, capsys):
    import json

    from crisp.cli import main

    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "small_cnn", "--block", "16", "--sparsity", "0.8", "--threads", "1",
                 "--methods", "torch_dense,torch_bsr,crisp_cpu", "--budget", "0.05", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| crisp_cpu" in text and "| torch_bsr" in text and "limit/crisp" in text
    data = json.loads(out.read_text())
    assert set(data["methods"]) == {"torch_dense", "torch_bsr", "crisp_cpu"}
    assert data["methods"]["crisp_cpu"]["relative_error"] < 1e-4
    assert data["layers"] and all(layer["crisp_ms"] > 0 and 0 < layer["density"] <= 1 for layer in data["layers"])


def test_bench_command_rejects_unknown_methods(capsys):
    from crisp.cli import main

    assert main(["bench", "--model", "small_cnn", "--methods", "tensorflow"]) == 1
    assert "unknown method" in capsys.readouterr().err


class PoolZoo(torch.nn.Module):
    """Pools crisp's kernels compute (floor-mode max pool, global average) and ones they leave to torch."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.ceil_pool = torch.nn.MaxPool2d(2, 2, ceil_mode=True)
        self.avg = torch.nn.AdaptiveAvgPool2d(1)
        self.avg2 = torch.nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        return self.avg(self.ceil_pool(y)).flatten(1) + self.avg2(y).mean((2, 3))


def test_pools_are_lowered_only_where_exact():
    torch.manual_seed(0)
    model = PoolZoo().eval()
    x = torch.randn(2, 8, 13, 11)
    compiled = crisp.compile(model, (x,), target="cpu", sparsity=0.8, block=16, verify=False)
    assert compiled.artifacts["lowered_pools"] == ["pool", "avg"]
    with torch.no_grad():
        assert max_relative_error(compiled(x), crisp.apply_masks(model, compiled.masks)(x)) <= 1e-4
