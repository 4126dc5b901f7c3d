"""The ``crisp-stc`` target: lowers the compiled model to a CRISP-STC instruction trace.

The module it returns is the lowered graph module itself (it runs on the reference kernels);
the trace is in ``artifacts["trace"]`` (a :class:`crisp.backends.stc_trace.Trace`) for
``crisp.simulate`` / ``CompiledModel.simulate``. Options (from ``crisp.compile(**options)``):
``arch`` (preset name, file or Arch; default ``"crisp-stc"``), ``trace_path`` (also save the
trace there) and ``strict`` (refuse patterns the architecture cannot run natively).
"""

from __future__ import annotations

from crisp.backends.registry import BackendInput, BackendOutput, register_backend
from crisp.backends.stc_trace import trace_from_layers


@register_backend("crisp-stc", options=("arch", "trace_path", "strict"))
def stc_backend(inp: BackendInput) -> BackendOutput:
    opts = inp.options or {}
    trace = trace_from_layers(inp.layers, arch=opts.get("arch", "crisp-stc"), strict=bool(opts.get("strict", False)))
    artifacts = {"trace": trace}
    if opts.get("trace_path"):
        artifacts["trace_path"] = str(opts["trace_path"])
        artifacts["trace_bytes"] = trace.save(opts["trace_path"])
    return BackendOutput(module=inp.graph_module, artifacts=artifacts)
