"""``torch.compile(model, backend="crisp", options={...})``: a TorchDynamo backend that hands each
captured graph to :func:`crisp.compile` (``options`` are its keyword arguments).

Registered through the ``torch_dynamo_backends`` entry point, so it works without ``import crisp``.
Each graph TorchDynamo captures is compiled once, on its first call, with that call's inputs as
example inputs; later calls that pass TorchDynamo's guards reuse it, and graph breaks give one compiled
graph per piece. The weights are copied when a graph is compiled: changing the model's weights
afterwards does not change the compiled graphs (call ``torch.compiler.reset()`` and run again to
recompile). Graphs whose inputs include symbolic sizes (``dynamic=True``, or TorchDynamo's automatic
dynamic shapes after a size changed) run uncompiled with one warning; pass ``dynamic=False``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import fx, nn

from crisp.api import compile as crisp_compile
from crisp.errors import CrispError
from crisp.ir.capture import dynamo_attr_name, raise_functional_layers

log = logging.getLogger(__name__)
COMPILED_GRAPHS: list[Any] = []  # every CompiledModel this backend made, in order (for inspection)


def _owner(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, attr = path.split(".")
    mod = root
    for p in parents:
        if not hasattr(mod, p):
            mod.add_module(p, nn.Module())
        mod = getattr(mod, p)
    return mod, attr


def lift_weights(gm: fx.GraphModule, example_inputs: list) -> tuple[fx.GraphModule, list[int]]:
    """The graph with the model's parameters and buffers (TorchDynamo passes them as inputs) as
    attributes under their original names; returns it and the positions of the real inputs.
    TorchDynamo's graph itself is left as it is (it still owns it)."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}), type_expr=None)
    gm = fx.GraphModule(gm, graph)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise CrispError(f"torch.compile gave {len(example_inputs)} inputs for {len(placeholders)} graph inputs")
    user = []
    for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
        name = dynamo_attr_name(str(node.target))
        if name is None or not isinstance(value, torch.Tensor):
            user.append(i)
            continue
        owner, attr = _owner(gm, name)
        if isinstance(value, nn.Parameter):
            owner.register_parameter(attr, value)
        else:
            owner.register_buffer(attr, value)
        with gm.graph.inserting_before(node):
            got = gm.graph.get_attr(name)
        node.replace_all_uses_with(got)
        gm.graph.erase_node(node)
    for node in gm.graph.nodes:
        node.meta = {}  # TorchDynamo's fake values (symbolic sizes) must not reach crisp's passes
    gm.graph.lint()
    gm.recompile()
    return raise_functional_layers(gm), user


def crisp_backend(gm: fx.GraphModule, example_inputs: list, options: dict | None = None, **unused):
    """The TorchDynamo backend (see the module docstring)."""
    options = dict(options or {})
    if unused.get("mode") not in (None, "default"):
        warnings.warn(f"torch.compile(backend='crisp') ignores mode={unused['mode']!r}")
    if any(not isinstance(v, torch.Tensor) for v in example_inputs):
        warnings.warn("crisp: a graph with symbolic sizes runs uncompiled; use torch.compile(..., dynamic=False)")
        return gm.forward
    n_inputs = len(example_inputs)
    gm, user = lift_weights(gm, list(example_inputs))
    state: dict[str, Any] = {}

    def run(*args):
        if len(args) == n_inputs and n_inputs != len(user):  # called with the weights too
            args = tuple(args[i] for i in user)
        compiled = state.get("compiled")
        if compiled is None:  # compile on the first call, outside TorchDynamo's fake-tensor context
            compiled = state["compiled"] = crisp_compile(gm, args, **options)
            COMPILED_GRAPHS.append(compiled)
            log.info("crisp: compiled a captured graph (%d layers pruned)",
                     sum(1 for r in compiled.report.rows if r.pruned))
        return compiled(*args)

    run.crisp_state = state
    return run
