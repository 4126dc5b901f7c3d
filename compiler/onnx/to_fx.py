"""Import an ONNX graph into a ``torch.fx.GraphModule`` (crisp's IR), for analyses that need
gradients such as the class-aware saliency of an ONNX model.

Each ONNX node becomes one ``call_function`` node of the function that :data:`OPS` holds for its
op type (:mod:`crisp.onnx.op_table`); initializers become parameters (the ones named in
``trainable``, so that they receive gradients) or buffers of the module, and Constant nodes
become buffers. An op outside the table fails with :class:`OnnxImportError`, naming the node and
its op type. The module runs eagerly: shape subgraphs (Shape, Gather, Concat, ...) are evaluated
on real tensors, as onnxruntime would.
"""

from __future__ import annotations

import operator
from typing import Iterable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from crisp.onnx.io import constant_node_value, default_opset
from crisp.onnx.op_table import OPS, OnnxImportError

# inputs that old opsets gave as attributes and new ones as tensors: {op: keyword of input 1}
_SECOND_INPUT_NAMES = {"Unsqueeze": "axes_in", "Squeeze": "axes_in", "ReduceMean": "axes_in", "ReduceSum": "axes_in",
                       "ReduceMax": "axes_in", "ReduceMin": "axes_in"}
_TAKES_OP_TYPE = ("Softmax", "LogSoftmax", "Min", "Max", "Sum", "Mean", "Resize", "Upsample")
_FIRST_OUTPUT_ONLY = ("BatchNormalization", "Dropout", "MaxPool")  # training-only / index outputs are not produced
_MAGNITUDE_HINT = "use saliency='magnitude' for this model"


def _attr_value(attr: onnx.AttributeProto):
    value = helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return torch.from_numpy(numpy_helper.to_array(value).copy())
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _safe(name: str, used: set[str]) -> str:
    base = "".join(c if c.isalnum() else "_" for c in name).strip("_") or "t"
    if base[0].isdigit():
        base = "t_" + base
    out, i = base, 1
    while out in used:
        out, i = f"{base}_{i}", i + 1
    used.add(out)
    return out


def _is_used(graph: onnx.GraphProto, name: str) -> bool:
    return any(name in n.input for n in graph.node) or any(o.name == name for o in graph.output)


class _Importer:
    """The state of one import: the module that holds the tensors, the fx graph and the value
    of every ONNX name produced so far."""

    def __init__(self, model: onnx.ModelProto, trainable: set[str]):
        self.graph = model.graph
        self.opset = default_opset(model)
        self.trainable = trainable
        self.root = torch.nn.Module()
        self.fx_graph = torch.fx.Graph()
        self.used: set[str] = set()
        self.env: dict[str, torch.fx.Node] = {}
        self.onnx_names: dict[str, str] = {}

    def attach(self, onnx_name: str, array: np.ndarray) -> torch.fx.Node:
        """Hold ``array`` in the module (a parameter when trainable) and read it in the graph."""
        attr = _safe(onnx_name, self.used)
        tensor = torch.from_numpy(np.array(array, copy=True))
        if onnx_name in self.trainable:
            self.root.register_parameter(attr, torch.nn.Parameter(tensor.float()))
        else:
            self.root.register_buffer(attr, tensor)
        self.onnx_names[attr] = onnx_name
        return self.fx_graph.get_attr(attr)

    def inputs(self) -> None:
        inits = {t.name: t for t in self.graph.initializer}
        for inp in self.graph.input:
            if inp.name not in inits:
                self.env[inp.name] = self.fx_graph.placeholder(_safe(inp.name, self.used))
        for name, tensor in inits.items():
            self.env[name] = self.attach(name, numpy_helper.to_array(tensor))

    def node(self, node: onnx.NodeProto, label: str) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"node {label!r} has op type {node.domain}::{node.op_type}, which crisp's ONNX "
                                  f"importer does not support; {_MAGNITUDE_HINT}")
        if node.op_type == "Constant":
            value = constant_node_value(node)
            if value is None:
                raise OnnxImportError(f"Constant node {label!r} holds no tensor value; {_MAGNITUDE_HINT}")
            self.env[node.output[0]] = self.attach(node.output[0], value)
            return
        fn = OPS.get(node.op_type)
        if fn is None:
            raise OnnxImportError(f"node {label!r} has op type {node.op_type!r}, which crisp's ONNX importer does not "
                                  f"support (supported: {', '.join(sorted(OPS))}); {_MAGNITUDE_HINT}")
        args, kwargs = self.arguments(node, label)
        call = self.fx_graph.call_function(fn, tuple(args), kwargs)
        call.meta["onnx_node"] = label
        call.meta["onnx_op_type"] = node.op_type
        self.outputs(node, label, call)

    def arguments(self, node: onnx.NodeProto, label: str) -> tuple[list, dict]:
        """The fx arguments of ``node``: its inputs, and its attributes with the call conventions
        of :data:`OPS` (inputs that old opsets took as attributes, the op type, the opset, ...)."""
        args = []
        for name in node.input:
            if name and name not in self.env:
                raise OnnxImportError(f"node {label!r} reads {name!r}, which no earlier node produces; is the graph sorted?")
            args.append(self.env[name] if name else None)
        while args and args[-1] is None:
            args.pop()
        kwargs = {a.name: _attr_value(a) for a in node.attribute}
        for key, value in list(kwargs.items()):  # tensor attributes live in the module, not in the code
            if isinstance(value, torch.Tensor):
                kwargs[key] = self.attach(f"{label}_{key}", value.numpy())
        op = node.op_type
        if op in _SECOND_INPUT_NAMES and len(args) > 1:
            kwargs[_SECOND_INPUT_NAMES[op]] = args.pop(1)
        if op in _TAKES_OP_TYPE:
            kwargs["_op_type"] = op
        if op in ("Softmax", "LogSoftmax"):
            kwargs["_opset"] = self.opset
        if op == "Split":
            kwargs["_n_out"] = len(node.output)
        if op == "Clip" and self.opset >= 11:
            kwargs.pop("min", None), kwargs.pop("max", None)
        return args, kwargs

    def outputs(self, node: onnx.NodeProto, label: str, call: torch.fx.Node) -> None:
        outputs = list(node.output)
        if node.op_type in _FIRST_OUTPUT_ONLY:
            outputs = outputs[:1]
            if any(o and _is_used(self.graph, o) for o in node.output[1:]):
                raise OnnxImportError(f"node {label!r} ({node.op_type}) uses its extra outputs, which crisp's importer "
                                      "does not produce")
        if node.op_type == "Split":
            for i, out in enumerate(outputs):
                if out:
                    self.env[out] = self.fx_graph.call_function(operator.getitem, (call, i))
        else:
            self.env[outputs[0]] = call

    def finish(self) -> torch.fx.GraphModule:
        results = []
        for out in self.graph.output:
            if out.name not in self.env:
                raise OnnxImportError(f"graph output {out.name!r} is produced by no node")
            results.append(self.env[out.name])
        self.fx_graph.output(results[0] if len(results) == 1 else tuple(results))
        gm = torch.fx.GraphModule(self.root, self.fx_graph, class_name="OnnxImported")
        gm.onnx_names = self.onnx_names
        gm.onnx_attrs = {v: k for k, v in self.onnx_names.items()}
        return gm


def onnx_to_fx(model: onnx.ModelProto, *, trainable: Iterable[str] = ()) -> torch.fx.GraphModule:
    """Import ``model``'s main graph. Initializers named in ``trainable`` become
    ``nn.Parameter``s (float32); ``gm.onnx_names`` maps each module attribute back to its ONNX name
    and ``gm.onnx_attrs`` maps ONNX initializer names to attributes."""
    importer = _Importer(model, set(trainable))
    importer.inputs()
    for idx, node in enumerate(model.graph.node):
        importer.node(node, node.name or f"{node.op_type}_{idx}")
    return importer.finish()


__all__ = ["OPS", "OnnxImportError", "onnx_to_fx"]
