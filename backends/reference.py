"""The ``reference`` target: run the lowered graph as is, on the reference kernel."""

from __future__ import annotations

from crisp.backends.registry import BackendInput, BackendOutput, register_backend


@register_backend("reference", options=())
def reference_backend(lowered: BackendInput) -> BackendOutput:
    return BackendOutput(module=lowered.graph_module)
