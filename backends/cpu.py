"""The ``cpu`` target: the ``cpu`` pipeline runs the lowered graph on crisp's fast CPU kernels.

:func:`cpu_pipeline` is the pass list (each pass works on a copy; the lowered graph module the
backend receives is never changed):

1. :class:`FuseSparseLayersForCpu`: each pruned layer's subgraph becomes one call of the kernel
   measured fastest for it (crisp's channel or rows kernel on a weight packed for it, or torch's
   own conv / linear on the whole weight where no sparse kernel wins), bias, ReLU / ReLU6 and
   residual adds fused; activations flow channels-last from there on;
2. :class:`FoldDenseBatchNorms`: BatchNorms after the layers left dense fold into them;
3. :class:`LowerDepthwiseConvs`: dense depthwise convs (MobileNetV2) on crisp's depthwise kernel;
4. :class:`LowerDenseConvs`: the other dense convs on crisp's kernels with every weight kept or on
   torch's conv, whichever measures faster;
5. :class:`FuseExpandDepthwise`: a 1x1 conv on crisp's GEMM kernel feeding a depthwise conv
   (MobileNetV2's expansion) becomes one call that never writes the expanded tensor, where
   that measures faster;
6. :class:`LowerPools`: MaxPool2d and average pools on crisp's channels-last pools, so that
   no other thread pool wakes between two layers.

The backend returns the result with what each pass did as artifacts. If the fast kernels cannot
be built or fail their self-check, or the model is not float32, it returns the lowered graph
unchanged (the reference kernel) after one warning.
"""

from __future__ import annotations

import torch
from torch import fx

from crisp.ir.meta import CPU_KEY
from crisp.passes import (
    FoldDenseBatchNorms, FuseExpandDepthwise, FuseSparseLayersForCpu, LowerDenseConvs, LowerDepthwiseConvs, LowerPools, PackedLayer,
    Pipeline, named_pipeline,
)
from crisp.runtime import cpu_capability, fast_kernel

from crisp.backends.registry import BackendInput, BackendOutput, register_backend


@named_pipeline("cpu", FuseSparseLayersForCpu, FoldDenseBatchNorms, LowerDepthwiseConvs, LowerDenseConvs,
                FuseExpandDepthwise, LowerPools)
def cpu_pipeline(fuse_activations: bool = True, progress: bool = False) -> Pipeline:
    """The ``cpu`` target's passes, run on the default pipeline's lowered graph; ``fuse_activations``
    fuses ReLU / ReLU6 and residual adds into the kernels."""
    return Pipeline([
        FuseSparseLayersForCpu(fuse_activations),
        FoldDenseBatchNorms(),
        LowerDepthwiseConvs(fuse_activations),
        LowerDenseConvs(fuse_activations),
        FuseExpandDepthwise(),
        LowerPools(),
    ], progress=progress)


def _float32_model(graph_module: fx.GraphModule) -> bool:
    return all(t.dtype == torch.float32 for t in graph_module.parameters()) and all(
        t.dtype == torch.float32 for name, t in graph_module.named_buffers() if name.endswith(".values")
    )


@register_backend("cpu", options=("fuse_activations",))
def cpu_backend(lowered: BackendInput) -> BackendOutput:
    if not _float32_model(lowered.graph_module):
        return BackendOutput(module=lowered.graph_module, artifacts={"cpu_kernels": "reference", "reason": "model is not float32"})
    if not fast_kernel.available():  # warns once per process
        return BackendOutput(
            module=lowered.graph_module,
            artifacts={"cpu_kernels": "reference", "reason": fast_kernel.unavailable_reason()},
        )
    gm = cpu_pipeline(lowered.options.get("fuse_activations", True))(lowered.graph_module).graph_module
    done = gm.meta.get(CPU_KEY, {})
    packed = sum(m.nbytes for m in gm.modules() if isinstance(m, PackedLayer))
    return BackendOutput(module=gm, artifacts={
        "cpu_kernels": "fast", "cpu_isa": fast_kernel.cpu_capability(), "cpu": cpu_capability.cpu_model(),
        "fused": done.get("fused", {}), "kernel_choices": done.get("kernel_choices", {}),
        "folded_batchnorms": done.get("folded_batchnorms", []),
        "dense_convs": done.get("dense_convs", []), "expand_depthwise": done.get("expand_depthwise", []), "lowered_pools": done.get("lowered_pools", []),
        "packed_weight_bytes": packed,
    })
