"""The peers crisp's CPU runtime is compared with, whole model and per layer, behind ``crisp bench`` and
``benchmarks/cpu_runtime.py``.

Every runner is a zero-argument callable doing one inference on a fixed input;
:func:`crisp.bench.timing.measure` times it. The peers, all on the same model and (for the sparse ones) the same masks:

- ``torch_dense``: eager torch, BatchNorm folded (:func:`crisp.ir.batchnorm.fold_batchnorms`),
  channels_last weights and input;
- ``onnxruntime_dense``: the BN-folded model exported to ONNX, all graph optimizations on;
- ``torch_bsr``: every pruned layer as ``unfold`` (in crisp's (kh, kw, cin) order, so the blocks
  are exactly crisp's kept blocks) and a torch ``sparse_bsr`` matmul; other layers dense torch;
- ``scipy_bsr``: the same with ``scipy.sparse.bsr_matrix`` (single-threaded);
- ``crisp_reference``: the lowered graph on the reference kernel;
- ``crisp_cpu``: the ``cpu`` target (fast fused kernels).
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from crisp.sparsity.gemm_view import pad_to_blocks, weight_to_gemm
from crisp.ir.batchnorm import fold_batchnorms
from crisp.ir.conv_geometry import conv_out_size
from crisp.ir.layer_info import LayerInfo
from crisp.runtime import fast_kernel
from crisp.runtime.packed_weight import ChannelPackedWeight, DenseWeight, GemmPackedWeight
from crisp.passes.cpu_kernel_choice import candidates, run_candidate
from crisp.errors import CrispError
from crisp.bench.timing import Timing, measure
from crisp.tables import table


# ---------------------------------------------------------------------------- models
def masked_copy(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with every masked weight multiplied by its mask (eval mode)."""
    masked = copy.deepcopy(model).eval()
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))
    return masked


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """The model traced with every conv/linear -> BatchNorm pair folded into the layer (eval mode)."""
    folded = fx.symbolic_trace(copy.deepcopy(model).eval())
    fold_batchnorms(folded)
    folded.recompile()
    return folded


def torch_dense_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            return folded(xc)

    return run


def onnxruntime_runner(model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    folded = fold_batchnorm(model)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(folded, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


class _GemmLayer(nn.Module):
    """A pruned conv/linear as ``unfold`` (crisp's (kh, kw, cin) column order) + a sparse matmul."""

    def __init__(self, module: nn.Module, block: int, engine: str):
        super().__init__()
        weight = module.weight.detach()
        self.is_conv = isinstance(module, nn.Conv2d)
        if self.is_conv:
            self.kernel, self.stride = module.kernel_size, module.stride
            self.padding, self.dilation = module.padding, module.dilation
            self.cin = module.in_channels
        self.rows, self.k = weight_to_gemm(weight).shape
        gemm = pad_to_blocks(weight_to_gemm(weight).contiguous(), block, 0)
        self.bias = None if module.bias is None else module.bias.detach().clone()
        self.engine = engine
        if engine == "torch_bsr":
            with warnings.catch_warnings():  # torch flags sparse BSR as beta
                warnings.simplefilter("ignore")
                self.matrix = gemm.to_sparse_bsr((block, block))
        else:
            sparse = scipy_sparse()
            if sparse is None:
                raise CrispError(f"the scipy_bsr peer needs {SCIPY_MISSING}")
            self.matrix = sparse.bsr_matrix(gemm.numpy(), blocksize=(block, block))
        self.padded_k = gemm.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_conv:
            n, _, h, w = x.shape
            oh, ow = (conv_out_size(size, self.kernel[i], self.stride[i], self.dilation[i], self.padding[i])
                      for i, size in enumerate((h, w)))
            cols = F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)  # [N, cin*kh*kw, L]
            cols = cols.unflatten(1, (self.cin, -1)).transpose(1, 2).flatten(1, 2)  # (kh, kw, cin) order
            rhs = cols.transpose(0, 1).flatten(1)  # [K, N*L]
        else:
            lead = x.shape[:-1]
            rhs = x.reshape(-1, self.k).t()
        if self.padded_k != self.k:
            rhs = F.pad(rhs, (0, 0, 0, self.padded_k - self.k))
        if self.engine == "torch_bsr":
            out = self.matrix @ rhs.contiguous()
        else:
            out = torch.from_numpy(np.ascontiguousarray(self.matrix @ rhs.contiguous().numpy()))
        out = out[: self.rows]
        if self.bias is not None:
            out = out + self.bias[:, None]
        if self.is_conv:
            return out.unflatten(1, (n, oh * ow)).transpose(0, 1).unflatten(2, (oh, ow))
        return out.t().reshape(*lead, self.rows)


def sparse_peer_runner(model: nn.Module, masks: dict[str, torch.Tensor], layers: list[LayerInfo], x: torch.Tensor,
                       block: int, engine: str) -> Callable[[], torch.Tensor]:
    """``engine`` is "torch_bsr" or "scipy_bsr": the masked, BN-folded model with every pruned layer
    on that sparse format (same kept blocks as crisp)."""
    folded = fold_batchnorm(masked_copy(model, masks))
    for info in layers:
        if info.compact is None:
            continue
        module = folded.get_submodule(info.name)
        folded.set_submodule(info.name, _GemmLayer(module, block, engine))

    def run():
        with torch.no_grad():
            return folded(x)

    return run


# ---------------------------------------------------------------------------- per layer
@dataclass
class LayerTiming:
    name: str
    kind: str
    input_shape: tuple
    density: float  # kept weights / dense weights
    dense_ms: float  # best of torch NCHW and channels_last, bias included
    crisp_ms: float
    limit_ms: float  # dense_ms * density: the ideal block-skip time
    efficiency: float  # limit_ms / crisp_ms
    kernel: str = "rows"  # "channel" (NHWC, over output channels), "rows" (over positions), "gemm" (crisp's dense conv) or "dense" (torch)
    dense_cpu_ms: float = float("nan")  # process CPU time medians (robust to other jobs at 1 thread)
    crisp_cpu_ms: float = float("nan")
    # the share of weight blocks kept (density x m/n): the bound of a kernel that skips pruned
    # blocks but does the dense work inside kept ones; limit_ms counts the N:M skipping as well
    block_density: float = float("nan")
    isa: str = ""  # the ISA path the kernel ran on
    why: str = ""  # why the compile chose this kernel (measured, cached, rule)

    def as_dict(self) -> dict:
        return asdict(self)


def capture_layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model`` once and keep the input of every module in ``names``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, args[0].detach()))
        for name in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def per_layer_times(model: nn.Module, compiled, x: torch.Tensor, **measure_kw) -> list[LayerTiming]:
    """Each pruned layer alone: dense torch (BN folded) vs the fast op, and the block-skip limit."""

    pruned = [info for info in compiled.layers if info.compact is not None]
    folded = fold_batchnorm(masked_copy(model, compiled.masks))
    inputs = capture_layer_inputs(folded, [info.name for info in pruned], x)
    out = []
    with torch.no_grad():
        for info in pruned:
            module = folded.get_submodule(info.name)
            xi = inputs[info.name]
            bias = None if module.bias is None else module.bias.detach()
            chosen = compiled.artifacts.get("kernel_choices", {}).get(info.name, {})
            conv_geometry = ((info.conv.kernel, info.conv.strides, info.conv.padding, info.conv.dilations)
                             if isinstance(module, nn.Conv2d) else None)
            options = candidates(info.compact, info.weight_shape[1], info.kind == "conv")
            kernel = chosen.get("kernel") if chosen.get("kernel") in options else next(iter(options))
            packed = options[kernel]  # the kernel the compiled model runs for this layer
            # they take channels-last inputs
            channel = isinstance(packed, (ChannelPackedWeight, DenseWeight, GemmPackedWeight))
            density = float(info.mask.sum()) / info.mask.numel()
            if isinstance(module, nn.Conv2d):
                cl_module = copy.deepcopy(module).to(memory_format=torch.channels_last)
                x_cl = xi.contiguous(memory_format=torch.channels_last)
                dense_runs = (measure(lambda: module(xi), **measure_kw), measure(lambda: cl_module(x_cl), **measure_kw))
                dense = min(t.median_ms for t in dense_runs)
                dense_cpu = min(t.cpu_median_ms for t in dense_runs)
                xk = x_cl if channel else xi  # the layout the compiled graph feeds this kernel
                fast = measure(lambda: run_candidate(packed, xk, bias, conv_geometry, True), **measure_kw)
            else:
                dense_run = measure(lambda: module(xi), **measure_kw)
                dense, dense_cpu = dense_run.median_ms, dense_run.cpu_median_ms
                fast = measure(lambda: run_candidate(packed, xi, bias, (), False), **measure_kw)
            limit = dense * density
            pattern = info.compact.pattern
            out.append(LayerTiming(info.name, info.kind_label, tuple(xi.shape), density, dense, fast.median_ms, limit,
                                   limit / fast.median_ms, kernel, dense_cpu, fast.cpu_median_ms,
                                   min(1.0, density * pattern.m / pattern.n), chosen.get("isa", fast_kernel.cpu_capability()),
                                   chosen.get("reason", "")))
    return out


# ---------------------------------------------------------------------------- whole model
METHODS = ("torch_dense", "onnxruntime_dense", "torch_bsr", "scipy_bsr", "crisp_reference", "crisp_cpu")
SCIPY_MISSING = "scipy, which is not installed: pip install 'crisp[bench]'"


def scipy_sparse():
    """``scipy.sparse``, or None where scipy (the ``bench`` extra) is not installed."""
    try:
        import scipy.sparse
    except ImportError:
        return None
    return scipy.sparse
DENSE_METHODS = ("torch_dense", "onnxruntime_dense")  # run the unpruned model
SLOW_METHODS = ("scipy_bsr", "crisp_reference")  # hundreds of ms a run: timed once, after the others
REFERENCE_MEMORY_LIMIT = 2 << 30  # bytes one reference-kernel gather may take before we skip it


def reference_gather_bytes(compiled, batch: int) -> int:
    """The largest temporary the reference kernel builds ([positions, B, values per row] floats)."""
    worst = 0
    for info in compiled.layers:
        if info.compact is not None:
            t = info.compact
            worst = max(worst, batch * info.out_positions * t.pattern.block * t.kept_blocks_per_row
                        * t.pattern.values_per_block_row * 4)
    return worst


SETTLE_S = 0.1  # idle before each method's turn: longer than the other libraries' pools spin after a run


def compare_model(model: nn.Module, x: torch.Tensor, compiled, *, block: int, threads: int,
                  methods=METHODS, budget_s: float = 3.0, min_runs: int = 5, rounds: int = 3) -> dict[str, dict]:
    """Time every method on input ``x`` with ``threads`` threads; each entry holds the timing (or
    why it was skipped) and the largest relative deviation from the masked dense model.

    The fast methods are timed in ``rounds`` rounds, each giving every method a share of its
    budget in turn, and their medians are over all rounds: on a shared machine whose speed
    drifts (other jobs, a clock that drops under sustained load), every method then sees the
    same phases. Runs of one method stay together, and each turn starts after ``SETTLE_S`` idle,
    so no method measures another's aftermath (caches, a thread pool still spinning: onnxruntime's
    worker spins about 40 ms after a run, torch's OpenMP worker about 8 ms, on the 2-vCPU AMD EPYC
    the results came from; without the pause MobileNetV2 on crisp measured 12.6 ms where it takes
    7.4 alone). The slow methods (reference kernel, scipy) come last, timed once."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            want_sparse = masked_copy(model, compiled.masks)(x)
            want_dense = copy.deepcopy(model).eval()(x)
        out: dict[str, dict] = {}
        runs: dict[str, Callable[[], object]] = {}
        for method in methods:
            if method == "crisp_reference" and reference_gather_bytes(compiled, x.shape[0]) > REFERENCE_MEMORY_LIMIT:
                gib = reference_gather_bytes(compiled, x.shape[0]) / 2**30
                out[method] = {"skipped": f"the reference kernel would gather {gib:.1f} GiB in one layer"}
                continue
            if method == "scipy_bsr" and scipy_sparse() is None:
                out[method] = {"skipped": f"needs {SCIPY_MISSING}"}
                continue
            run = _runner(method, model, x, compiled, block, threads)
            with torch.no_grad():
                y = run()
            y = torch.as_tensor(y[0]) if isinstance(y, list) else y
            want = want_dense if method in DENSE_METHODS else want_sparse
            out[method] = {"relative_error": float((y - want).abs().max() / want.abs().max())}
            runs[method] = run
        fast = [m for m in runs if m not in SLOW_METHODS]
        timings: dict[str, list[Timing]] = {m: [] for m in runs}
        with torch.no_grad():
            for _ in range(rounds):
                for method in fast:
                    time.sleep(SETTLE_S)
                    timings[method].append(measure(runs[method], warmup=2, min_runs=max(1, -(-min_runs // rounds)),
                                                   budget_s=budget_s / rounds))
            for method in (m for m in runs if m in SLOW_METHODS):
                timings[method].append(measure(runs[method], warmup=1, min_runs=3, budget_s=budget_s))
        for method, parts in timings.items():
            times = [t for part in parts for t in part.times_ms]
            cpu = [part.cpu_median_ms for part in parts]
            out[method].update({"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times),
                                "cpu_median_ms": statistics.median(cpu), "rounds": len(parts),
                                "round_medians_ms": [round(part.median_ms, 3) for part in parts]})
        return {method: out[method] for method in methods if method in out}
    finally:
        torch.set_num_threads(before)


def _runner(method: str, model: nn.Module, x: torch.Tensor, compiled, block: int, threads: int):
    if method == "torch_dense":
        return torch_dense_runner(model, x)
    if method == "onnxruntime_dense":
        return onnxruntime_runner(model, x, threads)
    if method in ("torch_bsr", "scipy_bsr"):
        return sparse_peer_runner(model, compiled.masks, compiled.layers, x, block, method)
    if method == "crisp_reference":
        return lambda: compiled.graph_module(x)
    if method == "crisp_cpu":
        if compiled.artifacts.get("cpu_kernels") != "fast":
            raise RuntimeError(f"the cpu target fell back to the reference kernel: {compiled.artifacts.get('reason')}")
        return lambda: compiled(x)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def model_table(results: dict[str, dict]) -> str:
    cpu = results.get("crisp_cpu", {}).get("median_ms")
    rows = []
    for method, r in results.items():
        if "skipped" in r:
            rows.append([method, "-", "-", "-", f"skipped: {r['skipped']}"])
            continue
        speedup = f"{r['median_ms'] / cpu:.2f}x" if cpu else "-"
        rows.append([method, f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}", speedup, f"{r['relative_error']:.1e}"])
    return table(rows, ["method", "median ms", "min ms", "crisp cpu speedup", "rel. error (vs dense / masked dense model)"],
                 fmt="markdown", align="lrrrl")


def layer_table(layers: list[LayerTiming]) -> str:
    rows = [[t.name, t.kind, "x".join(map(str, t.input_shape[1:])), f"{t.density:.3f}", f"{t.dense_ms:.3f}",
             f"{t.crisp_ms:.3f}", f"{t.limit_ms:.3f}", f"{t.efficiency:.2f}", t.kernel, t.isa,
             t.why] for t in layers]
    return table(rows, ["layer", "kind", "input", "density", "dense ms", "crisp ms", "limit ms", "limit/crisp", "kernel",
                        "isa", "why (compile-time measurement)"], fmt="markdown", align="lllrrrrrlll")


# ---------------------------------------------------------------------------- memory
def memory_footprint(module: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Bytes of the module's parameters and buffers, and the peak of the memory allocated during
    one forward (activations and workspaces, from the torch profiler's allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    weights = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    with torch.no_grad():
        module(x)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            module(x)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return {"weights_bytes": weights, "activation_peak_bytes": peak, "total_bytes": weights + peak}
