"""The cpu target's passes, one by one on a small lowered model: each keeps the model's numbers,
never changes its input, records what it did, and the ``cpu`` pipeline is named in crisp.PIPELINES."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crisp
from crisp import Pattern
from crisp.backends.cpu import cpu_pipeline
from crisp.errors import CrispError, PassOrderError
from crisp.ir.meta import CPU_KEY
from crisp.ir.tracing import trace
from crisp.passes import (
    FoldDenseBatchNorms, FuseExpandDepthwise, FuseSparseLayersForCpu, LowerDenseConvs, LowerDepthwiseConvs, LowerPools, PropagateShapes,
)
from crisp.runtime import dense_path, fast_kernel
from crisp.sparsity.masking import relative_error

needs_fast = pytest.mark.skipif(not fast_kernel.available(), reason=f"fast kernels unavailable: {fast_kernel.unavailable_reason()}")
CPU_PASSES = (FuseSparseLayersForCpu, FoldDenseBatchNorms, LowerDepthwiseConvs, LowerDenseConvs, FuseExpandDepthwise,
              LowerPools)


class Tiny(nn.Module):
    """A dense stem (K < block) + BN, a max pool, a depthwise conv + BN + ReLU6, pruned convs with
    BN and a residual add, a global average pool and a pruned classifier."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.dw, self.bn1, self.act = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        self.pw, self.bn2 = nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32)
        self.conv, self.bn3 = nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.avg, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(32, 16)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn0(self.stem(x))))
        y = self.bn2(self.pw(self.act(self.bn1(self.dw(x)))))
        y = torch.relu(self.bn3(self.conv(y)) + y)
        return self.fc(self.avg(y).flatten(1))


@pytest.fixture(scope="module")
def lowered():
    torch.manual_seed(0)
    model = Tiny()
    for bn in (model.bn0, model.bn1, model.bn2, model.bn3):  # statistics that make folding visible
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
    model.eval()
    x = torch.randn(2, 1, 12, 12)
    gm = crisp.default_pipeline(model, (x,), Pattern(2, 4, 16), 0.8)(trace(model)).graph_module
    return gm, x


def _snapshot(gm: torch.fx.GraphModule):
    return gm.code, copy.deepcopy(gm.state_dict()), [type(m).__name__ for m in gm.modules()], set(gm.meta)


def _same(gm: torch.fx.GraphModule, snapshot) -> bool:
    code, state, modules, meta = snapshot
    now = gm.state_dict()
    return (gm.code == code and state.keys() == now.keys() and all(torch.equal(state[k], now[k]) for k in state)
            and [type(m).__name__ for m in gm.modules()] == modules and set(gm.meta) == meta)


@needs_fast
def test_each_cpu_pass_keeps_the_numbers_and_never_mutates_its_input(lowered):
    gm, x = lowered
    with torch.no_grad():
        want = gm(x)
    records = {FuseSparseLayersForCpu: "fused", FoldDenseBatchNorms: "folded_batchnorms", LowerDepthwiseConvs: "dense_convs",
               LowerDenseConvs: "dense_convs", LowerPools: "lowered_pools"}
    current = gm
    for cls in CPU_PASSES:
        before = _snapshot(current)
        result = cls()(current)
        assert _same(current, before), f"{cls.__name__} changed its input"
        if cls is FuseExpandDepthwise:  # Tiny has no 1x1 conv feeding a depthwise one (its own tests below)
            assert not result.modified and result.graph_module.meta[CPU_KEY]["expand_depthwise"] == []
        else:
            assert result.modified, f"{cls.__name__} found nothing to do on the test model"
            assert result.graph_module.meta[CPU_KEY][records[cls]], cls.__name__
        with torch.no_grad():
            assert relative_error(result.graph_module(x), want) <= 1e-5, cls.__name__
        current = result.graph_module
    done = current.meta[CPU_KEY]
    assert set(done["fused"]) == {"pw", "conv", "fc"}
    assert done["fused"]["conv"].startswith("conv+bias+residual+relu")
    assert done["folded_batchnorms"] == ["bn0", "bn1"]
    assert done["dense_convs"] == ["dw+relu6", "stem+relu"]
    assert done["lowered_pools"] == ["pool", "avg"]
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in current.modules())


@needs_fast
def test_each_cpu_pass_runs_alone(lowered):
    """No cpu pass depends on another one having run: each alone still computes the model."""
    gm, x = lowered
    with torch.no_grad():
        want = gm(x)
        for cls in CPU_PASSES:
            assert relative_error(cls()(gm).graph_module(x), want) <= 1e-5, cls.__name__


@needs_fast
def test_cpu_target_is_the_cpu_pipeline(lowered):
    gm, x = lowered
    compiled = crisp.compile(Tiny().eval(), (x,), target="cpu", pattern="2:4", block=16, sparsity=0.8, verify=False)
    ran = cpu_pipeline()(compiled.graph_module).graph_module
    assert ran.code == compiled.module.code
    assert compiled.artifacts["cpu_kernels"] == "fast"
    for key in ("fused", "folded_batchnorms", "dense_convs", "lowered_pools"):
        assert compiled.artifacts[key] == ran.meta[CPU_KEY][key]


def test_pipelines_list_the_cpu_pipeline_and_its_passes():
    assert set(crisp.PIPELINES) >= {"default", "cpu"}
    assert crisp.PIPELINES["cpu"] is cpu_pipeline
    assert crisp.PIPELINES["cpu"].passes == CPU_PASSES
    assert [type(p) for p in cpu_pipeline().passes] == list(CPU_PASSES)
    assert "FuseSparseLayersForCpu -> FoldDenseBatchNorms" in repr(crisp.PIPELINES["cpu"])
    model, x = crisp.models.build("small_cnn"), torch.randn(1, 1, 8, 8)
    built = crisp.default_pipeline(model, (x,), Pattern(2, 4, 16), 0.8)
    assert tuple(type(p) for p in built.passes) == crisp.PIPELINES["default"].passes
    assert "LowerToHybridSparseGemm" in repr(built)


def test_cpu_passes_state_what_they_need(lowered):
    gm, x = lowered
    traced = trace(Tiny().eval())
    with pytest.raises(PassOrderError, match="FuseSparseLayersForCpu needs the analysis 'lowered', which LowerToHybridSparseGemm"):
        FuseSparseLayersForCpu()(traced)
    with pytest.raises(PassOrderError, match="LowerPools needs the analysis 'shapes', which PropagateShapes"):
        LowerPools()(traced)
    assert PropagateShapes((x,))(traced).graph_module is not traced


def test_cpu_passes_refuse_without_fast_kernels(lowered, monkeypatch):
    gm, _ = lowered
    monkeypatch.setattr(fast_kernel, "available", lambda: False)
    with pytest.raises(CrispError, match="LowerPools inserts crisp's fast CPU kernels.*target='reference'"):
        LowerPools()(gm)


def _choices(gm: torch.fx.GraphModule) -> dict:
    return gm.meta[CPU_KEY]["kernel_choices"]


@needs_fast
def test_kernel_choice_is_measured_cached_and_deterministic_given_the_cache(lowered, tmp_path, monkeypatch):
    """The first compile times every candidate per layer and caches the verdicts; the next one reads
    them (same kernels, bit-identical outputs); a tampered cache is obeyed; a cleared cache measures
    again and gives the same outputs."""
    import json

    from crisp.passes import cpu_kernel_choice

    gm, x = lowered
    path = tmp_path / "kernel_choices.json"
    monkeypatch.setattr(cpu_kernel_choice, "cache_path", lambda: path)
    monkeypatch.delenv(cpu_kernel_choice.TUNE_ENV, raising=False)
    monkeypatch.delenv(cpu_kernel_choice.BUDGET_ENV, raising=False)
    first = cpu_pipeline()(gm).graph_module
    choices = _choices(first)
    assert set(choices) == {"pw", "conv", "fc", "stem"}  # the pruned layers and the conv left dense
    for name, choice in choices.items():
        assert "measured:" in choice["reason"] and choice["isa"] == fast_kernel.cpu_capability()
        assert choice["kernel"] == cpu_kernel_choice.pick(choice["times_ms"])
        assert "dense" in choice["times_ms"] and len(choice["times_ms"]) >= 2  # torch's own path always a candidate
    assert len(json.loads(path.read_text())) == 4
    with torch.no_grad():
        want = gm(x)
        y1 = first(x)
        assert relative_error(y1, want) < 1e-5
        second = cpu_pipeline()(gm).graph_module
        assert all("cached measurement" in c["reason"] for c in _choices(second).values())
        assert {k: c["kernel"] for k, c in _choices(second).items()} == {k: c["kernel"] for k, c in choices.items()}
        assert torch.equal(second(x), y1)
        # the cache decides: a cache that says "dense" for every layer gets torch's conv / linear
        cache = json.loads(path.read_text())
        path.write_text(json.dumps({k: {**v, "kernel": "dense"} for k, v in cache.items()}))
        forced = cpu_pipeline()(gm).graph_module
        assert {c["kernel"] for c in _choices(forced).values()} == {"dense"}
        assert "[dense]" in forced.meta[CPU_KEY]["fused"]["conv"]
        targets = {n.target for n in forced.graph.nodes if n.op == "call_function"}
        assert dense_path.conv2d in targets and dense_path.linear in targets
        assert relative_error(forced(x), want) < 1e-5
        # and the other way round: crisp's kernels everywhere
        path.write_text(json.dumps({k: {**v, "kernel": min((n for n in v["times_ms"] if n != "dense"),
                                                           key=v["times_ms"].get)} for k, v in cache.items()}))
        sparse = cpu_pipeline()(gm).graph_module
        assert "dense" not in {c["kernel"] for c in _choices(sparse).values()}
        assert relative_error(sparse(x), want) < 1e-5
        # every conv also has crisp's dense GEMM kernel as a candidate
        assert all("gemm" in choices[name]["times_ms"] for name in ("pw", "conv", "stem"))
        path.write_text(json.dumps({k: {**v, "kernel": "gemm" if "gemm" in v["times_ms"] else v["kernel"]}
                                    for k, v in cache.items()}))
        gemm = cpu_pipeline()(gm).graph_module
        assert _choices(gemm)["pw"]["kernel"] == "gemm"
        assert fast_kernel.op("dense_conv2d_nhwc") in {n.target for n in gemm.graph.nodes if n.op == "call_function"}
        assert relative_error(gemm(x), want) < 1e-5
        path.unlink()  # cleared: measured again, same outputs
        again = cpu_pipeline()(gm).graph_module
        assert all("measured:" in c["reason"] for c in _choices(again).values())
        assert relative_error(again(x), y1) < 1e-5


@needs_fast
def test_candidates_are_timed_with_the_layers_epilogue_and_input_layout(lowered, tmp_path, monkeypatch):
    """Every candidate is timed as the graph runs it: the stem on the model's NCHW input with its
    ReLU, the residual conv with a residual of its output's shape and its ReLU, the conv whose
    output feeds two layers with nothing fused; a context is part of the cache key."""
    from crisp.passes import cpu_kernel_choice

    gm, _ = lowered
    monkeypatch.setattr(cpu_kernel_choice, "cache_path", lambda: tmp_path / "kernel_choices.json")
    monkeypatch.delenv(cpu_kernel_choice.TUNE_ENV, raising=False)
    monkeypatch.delenv(cpu_kernel_choice.BUDGET_ENV, raising=False)
    seen: dict[tuple, set] = {}
    timed = cpu_kernel_choice.run_candidate

    def spy(packed, x, bias, geometry, conv, residual=None, clamp=(-cpu_kernel_choice.INF, cpu_kernel_choice.INF)):
        y = timed(packed, x, bias, geometry, conv, residual, clamp)
        nchw = x.stride() == torch.empty(x.shape).stride()
        seen.setdefault(tuple(x.shape), set()).add(
            (nchw, None if residual is None else tuple(residual.shape), tuple(clamp), type(packed).__name__))
        return y

    monkeypatch.setattr(cpu_kernel_choice, "run_candidate", spy)
    cpu_pipeline()(gm)
    inf = cpu_kernel_choice.INF
    stem, pw, conv, fc = seen[(2, 1, 12, 12)], seen[(2, 16, 6, 6)], seen[(2, 32, 6, 6)], seen[(2, 32)]
    assert {s[:3] for s in stem} == {(True, None, (0.0, inf))} and "DenseWeight" in {s[3] for s in stem}
    assert {s[:3] for s in pw} == {(False, None, (-inf, inf))}
    assert {s[:3] for s in conv} == {(False, (2, 32, 6, 6), (0.0, inf))} and "DenseWeight" in {s[3] for s in conv}
    assert {s[1:3] for s in fc} == {(None, (-inf, inf))}
    plain, fused = cpu_kernel_choice.Context(), cpu_kernel_choice.Context(residual=True, clamp=(0.0, inf))
    key = lambda context: cpu_kernel_choice.layer_key((32, 32, 3, 3), "2:4", 0.5, (2, 32, 6, 6), (), "conv", context)
    assert len({key(plain), key(fused), key(cpu_kernel_choice.Context(channels_last_input=False))}) == 3


@needs_fast
def test_dense_path_wins_only_by_its_margin():
    from crisp.passes.cpu_kernel_choice import DENSE_MARGIN, pick

    assert pick({"channel": 1.0, "rows": 3.0, "dense": 0.5}) == "dense"
    assert pick({"channel": 1.0, "rows": 3.0, "dense": DENSE_MARGIN + 0.05}) == "channel"  # faster, not by enough
    assert pick({"rows": 2.0, "channel": 1.0, "dense": 4.0}) == "channel"
    assert pick({"dense": 1.0}) == "dense"


@needs_fast
def test_kernel_choice_rule_without_measurement(lowered, tmp_path, monkeypatch):
    from crisp.passes import cpu_kernel_choice

    gm, x = lowered
    monkeypatch.setattr(cpu_kernel_choice, "cache_path", lambda: tmp_path / "kernel_choices.json")
    monkeypatch.setenv(cpu_kernel_choice.TUNE_ENV, "0")
    off = cpu_pipeline()(gm).graph_module
    assert all(f"rule ({cpu_kernel_choice.TUNE_ENV}=0)" in c["reason"] for c in _choices(off).values())
    monkeypatch.setenv(cpu_kernel_choice.TUNE_ENV, "1")
    monkeypatch.setenv(cpu_kernel_choice.BUDGET_ENV, "0")
    spent = cpu_pipeline()(gm).graph_module
    assert all("budget" in c["reason"] for c in _choices(spent).values())
    assert not (tmp_path / "kernel_choices.json").exists()
    with torch.no_grad():
        assert relative_error(off(x), gm(x)) < 1e-5 and torch.equal(off(x), spent(x))


@needs_fast
@pytest.mark.parametrize("output_size, hw, lowered", [(2, (8, 8), True), ((3, 2), (9, 4), True), (3, (8, 8), False),
                                                      ((None, 2), (6, 4), False)])
def test_adaptive_average_pools_with_disjoint_windows_run_on_crisps_kernels(output_size, hw, lowered):
    """AdaptiveAvgPool2d whose windows are equal and disjoint becomes a uniform depthwise conv on
    crisp's threads (no torch op between two crisp layers); other output sizes stay torch ops."""
    class PoolNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(output_size)

        def forward(self, x):
            return self.pool(x)

    model = PoolNet().eval()
    x = torch.randn(2, 5, *hw).contiguous(memory_format=torch.channels_last)
    gm = PropagateShapes((x,))(trace(model)).graph_module
    out = LowerPools()(gm).graph_module
    assert bool(out.meta[CPU_KEY].get("lowered_pools")) == lowered
    with torch.no_grad():
        assert relative_error(out(x), model(x)) < 1e-6


class ExpandThenDepthwise(nn.Module):
    """An inverted residual block's expansion (1x1, ReLU6) and depthwise conv (3x3 stride 2, ReLU6)
    as the cpu passes leave them: crisp's GEMM and depthwise kernel calls, then a use of the result."""

    def __init__(self, cin=8, rows=40):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.we, self.be = torch.randn(rows, cin, 1, 1, generator=gen), torch.randn(rows, generator=gen)
        self.wd, self.bd = torch.randn(rows, 1, 3, 3, generator=gen), torch.randn(rows, generator=gen)
        from crisp.runtime.packed_weight import GemmPackedWeight
        self.register_buffer("panels", GemmPackedWeight.from_dense(self.we).panels)
        self.register_buffer("ebias", self.be.clone())
        self.register_buffer("taps", self.wd.reshape(rows, 9).t().contiguous())
        self.register_buffer("bias", self.bd.clone())
        self.rows = rows

    def forward(self, x):
        e = fast_kernel.op("dense_conv2d_nhwc")(x, self.panels, self.rows, self.ebias, None, [1, 1], [1, 1], [0, 0],
                                                [1, 1], 0.0, 6.0)
        y = fast_kernel.op("depthwise_conv2d_nhwc")(e, self.taps, self.bias, [3, 3], [2, 2], [1, 1], [1, 1], 0.0, 6.0)
        return y * 2.0

    def reference(self, x):
        e = F.conv2d(x, self.we, self.be).clamp(0, 6)
        return F.conv2d(e, self.wd, self.bd, 2, 1, groups=self.rows).clamp(0, 6) * 2.0


def _expand_depthwise_graph(x):
    from torch.fx.passes.shape_prop import ShapeProp
    from crisp.ir.tracing import mark_analysis
    model = ExpandThenDepthwise()
    gm = torch.fx.symbolic_trace(model)
    ShapeProp(gm).propagate(x)
    mark_analysis(gm, "shapes")
    return model, gm


@needs_fast
@pytest.mark.parametrize("tune", ["0", "1"])
def test_expansion_and_depthwise_fuse_into_one_call(tune, monkeypatch, tmp_path):
    """Without measurement the pair fuses; measured, the verdict (fused or the two calls) is
    recorded with its times. Either way the output equals torch's convs and the input graph stays."""
    from crisp.passes import cpu_kernel_choice
    monkeypatch.setattr(cpu_kernel_choice, "cache_path", lambda: tmp_path / "choices.json")
    monkeypatch.setenv(cpu_kernel_choice.TUNE_ENV, tune)
    x = torch.randn(2, 8, 15, 13).contiguous(memory_format=torch.channels_last)
    model, gm = _expand_depthwise_graph(x)
    before = _snapshot(gm)
    result = FuseExpandDepthwise()(gm)
    assert _same(gm, before)
    out = result.graph_module
    targets = [n.target for n in out.graph.nodes if n.op == "call_function"]
    choice = out.meta[CPU_KEY]["kernel_choices"]["taps"]  # the depthwise call's weight: its layer name here
    assert choice["kernel"] in ("expand_depthwise", "depthwise")
    fused = choice["kernel"] == "expand_depthwise"
    if tune == "0":
        assert fused and choice["reason"].endswith(f"rule ({cpu_kernel_choice.TUNE_ENV}=0)")
    else:
        assert set(choice["times_ms"]) == {"expand_depthwise", "depthwise"} and "measured" in choice["reason"]
    assert (fast_kernel.op("expand_depthwise_nhwc") in targets) == fused
    assert (fast_kernel.op("depthwise_conv2d_nhwc") in targets) == (not fused)
    assert out.meta[CPU_KEY]["expand_depthwise"] == (["panels+taps"] if fused else [])
    with torch.no_grad():
        assert relative_error(out(x), model.reference(x.contiguous())) < 1e-5


@needs_fast
def test_expansion_with_a_second_user_is_not_fused(monkeypatch):
    """The expanded tensor is needed elsewhere: fusing would compute it twice, so the pair stays."""
    from crisp.passes import cpu_kernel_choice
    monkeypatch.setenv(cpu_kernel_choice.TUNE_ENV, "0")
    x = torch.randn(1, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    _, gm = _expand_depthwise_graph(x)
    dw = next(n for n in gm.graph.nodes if n.target is fast_kernel.op("depthwise_conv2d_nhwc"))
    with gm.graph.inserting_after(dw):
        extra = gm.graph.call_function(torch.ops.aten.sum.default, (dw.args[0],))
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    out_node.args = ((out_node.args[0], extra),)
    gm.recompile()
    result = FuseExpandDepthwise()(gm)
    assert not result.modified and result.graph_module.meta[CPU_KEY]["expand_depthwise"] == []
