"""PropagateShapes: run the example inputs through the graph and record every node's output
shape (``node.meta["tensor_meta"]``, as ``torch.fx.passes.shape_prop`` does).

Inputs that do not fit the model fail here with the node that refused them.
"""

from __future__ import annotations

import contextlib
import io
import sys

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from crisp.errors import ModelError
from crisp.validate import clone_inputs

from crisp.passes.base import CrispPass


class _NamedShapeProp(ShapeProp):
    def run_node(self, n: fx.Node):
        # torch's ShapeProp prints the traceback of a failing node to stderr before raising; the
        # ModelError below carries that cause, so it is held back (and anything else the node
        # wrote to stderr is passed on).
        held = io.StringIO()
        try:
            with contextlib.redirect_stderr(held):
                result = super().run_node(n)
            sys.stderr.write(held.getvalue())
            return result
        except Exception as exc:
            if isinstance(exc, ModelError):
                raise
            shapes = [tuple(a.shape) for a in self.args_of(n) if isinstance(a, torch.Tensor)]
            exc = exc.__cause__ if exc.__cause__ is not None and "ShapeProp error" in str(exc) else exc  # the real cause
            raise ModelError(
                f"the example inputs do not fit the model: node {n.name!r} ({n.op} {n.target}) failed on "
                f"inputs of shape {shapes}: {type(exc).__name__}: {exc}. Pass example inputs of the shape the model expects."
            ) from exc

    def args_of(self, n: fx.Node) -> list:
        try:
            args, _ = self.fetch_args_kwargs_from_env(n)
            return list(args)
        except Exception:
            return []


class PropagateShapes(CrispPass):
    adds = ("shapes",)

    def __init__(self, example_inputs: tuple):
        self.example_inputs = tuple(example_inputs)

    def call(self, graph_module: fx.GraphModule) -> bool:
        placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
        required = [n for n in placeholders if not n.args]  # placeholders without defaults
        if not (len(required) <= len(self.example_inputs) <= len(placeholders)):
            raise ModelError(
                f"the model takes {len(required)} input(s) ({', '.join(n.name for n in placeholders)}) "
                f"but {len(self.example_inputs)} example input(s) were given"
            )
        with torch.no_grad():
            _NamedShapeProp(graph_module).propagate(*clone_inputs(self.example_inputs))
        return False
