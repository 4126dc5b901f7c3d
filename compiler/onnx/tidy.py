"""Keep an ONNX graph consistent after crisp rewrote it: ``value_info`` in step with the tensors it
describes, graph inputs of initializers as the IR version asks, and no initializer that crisp left dead."""

from __future__ import annotations

import onnx
from onnx import helper

IR_INITIALIZERS_OPTIONAL = 4  # from IR version 4 on, an initializer need not be a graph input


def used_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name read by a node of the main graph, of any subgraph (If/Loop/Scan bodies read
    outer tensors by name), of a model-local function, or listed as a graph output."""
    names = {o.name for o in model.graph.output}
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            names.update(i for i in node.input if i)
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs))
        names.update(o.name for o in g.output)
    for fn in model.functions:
        names.update(i for node in fn.node for i in node.input if i)
    return names


def use_counts(graph: onnx.GraphProto, functions=()) -> dict[str, int]:
    """How many node inputs (subgraph and function bodies included) and graph outputs read each name."""
    counts: dict[str, int] = {}
    graphs, first = [graph], True
    while graphs:
        g = graphs.pop()
        for node in g.node:
            for i in node.input:
                counts[i] = counts.get(i, 0) + 1
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs))
        if first:
            for o in g.output:
                counts[o.name] = counts.get(o.name, 0) + 1
            first = False
    for fn in functions:
        for node in fn.node:
            for i in node.input:
                counts[i] = counts.get(i, 0) + 1
    return counts


def _tensor_info(t: onnx.TensorProto) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))


def _same_type(info: onnx.ValueInfoProto, t: onnx.TensorProto) -> bool:
    tt = info.type.tensor_type
    if not info.type.HasField("tensor_type") or tt.elem_type != t.data_type:
        return False
    if not tt.HasField("shape"):
        return True
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim] == list(t.dims)


def sync_value_info(model: onnx.ModelProto) -> None:
    """Make ``value_info`` describe the model as it is now: entries of initializers get the
    initializer's type and shape, entries of tensors that no longer exist are dropped. Entries of
    activations are kept as they were (symbolic dims such as ``N``, ``H``, ``W`` stay)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    exists = set(inits) | {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
    infos = []
    for info in graph.value_info:
        if info.name in inits:
            t = inits[info.name]
            infos.append(info if _same_type(info, t) else _tensor_info(t))
        elif info.name in exists:
            infos.append(info)
    del graph.value_info[:]
    graph.value_info.extend(infos)


def sync_initializer_inputs(model: onnx.ModelProto, listed: set[str]) -> None:
    """Graph inputs of initializers after a rewrite. ``listed``: the initializers the input model
    also listed as graph inputs. Below IR 4 every initializer is a graph input of its own type and
    shape; from IR 4 on, the listed ones keep their (updated) input entries and the rest are not
    added. Inputs whose initializer crisp removed are dropped."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    must_list = model.ir_version < IR_INITIALIZERS_OPTIONAL
    kept = []
    for inp in graph.input:
        if inp.name in inits:
            t = inits[inp.name]
            kept.append(inp if _same_type(inp, t) else _tensor_info(t))
        elif inp.name not in listed:  # a real input
            kept.append(inp)
    if must_list:
        have = {i.name for i in kept}
        kept.extend(_tensor_info(t) for t in graph.initializer if t.name not in have)
    del graph.input[:]
    graph.input.extend(kept)


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Remove the graph inputs that only mirror an initializer (what IR 3 required), so runtimes
    treat those weights as constants. Only used when crisp raises the IR version to 4 or more."""
    inits = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(kept)


def remove_dead_initializers(model: onnx.ModelProto, dead_before: set[str]) -> list[str]:
    """Drop every initializer nothing reads anymore, except those already unused in the input
    (``dead_before``, passed through as they were). Returns the removed names."""
    used = used_names(model)
    drop = {t.name for t in model.graph.initializer if t.name not in used and t.name not in dead_before}
    if not drop:
        return []
    keep = [t for t in model.graph.initializer if t.name not in drop]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    inputs = [i for i in model.graph.input if i.name not in drop]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return sorted(drop)


def dead_initializers(model: onnx.ModelProto) -> set[str]:
    """The initializers of ``model`` that nothing reads."""
    used = used_names(model)
    return {t.name for t in model.graph.initializer if t.name not in used}
