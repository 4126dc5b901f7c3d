"""Reading, preparing and writing ONNX models for crisp.

- :func:`load_model` reads a file (with its external data) and turns every way a file can be
  wrong (missing, a folder, truncated, corrupt, not ONNX, failing the checker) into a
  :class:`OnnxInputError` that names the file and says what to do.
- :func:`upgrade_opset` lifts old models to the opset crisp's functions need with
  onnx's version converter.
- :func:`fold_constant_tensors` evaluates the constant subgraphs (Constant nodes,
  ConstantOfShape, arithmetic on initializers) that produce given tensors with onnx-graphsurgeon
  and turns them into initializers, touching nothing else in the graph.
- :func:`save_model` writes atomically (temporary files in the target folder, then
  ``os.replace``), with external data when asked or when the model is over protobuf's 2 GiB.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import numpy_helper, version_converter

from crisp.errors import ModelError
from crisp.onnx.paths import OnnxOutputError, resolve_output, terminate_as_interrupt

MIN_SOURCE_OPSET = 7
PROTOBUF_LIMIT = 2**31 - 1
_EXTERNAL_THRESHOLD = 1_900_000_000  # bytes of tensor data above which the output uses external data


class OnnxInputError(ModelError):
    """The ONNX file or model given to crisp cannot be read or is not a valid ONNX model."""


# ---------------------------------------------------------------------------------- loading
def _looks_like_model(model: onnx.ModelProto) -> bool:
    return bool(model.opset_import) and model.HasField("graph") and (len(model.graph.node) > 0 or len(model.graph.output) > 0)


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX file with its external data and check it; raise OnnxInputError otherwise."""
    p = Path(path)
    if not p.exists():
        raise OnnxInputError(f"ONNX file {str(p)!r} does not exist; check the path")
    if p.is_dir():
        raise OnnxInputError(f"{str(p)!r} is a folder, not an ONNX file")
    if p.stat().st_size == 0:
        raise OnnxInputError(f"ONNX file {str(p)!r} is empty")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as exc:
        raise OnnxInputError(
            f"{str(p)!r} is not a readable ONNX model (truncated, corrupt or another file type): {exc}"
        ) from None
    if not _looks_like_model(model):
        raise OnnxInputError(
            f"{str(p)!r} is not an ONNX model (no graph or no opset import); "
            "pass a .onnx file exported by e.g. torch.onnx.export"
        )
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise OnnxInputError(
            f"cannot read the external data of {str(p)!r}: {exc}; keep the weight files next to the model"
        ) from None
    if check:
        check_input(model, str(p))
    return model


def check_input(model: onnx.ModelProto, label: str = "the model") -> None:
    """Run the ONNX checker on an input model; raise OnnxInputError with its message."""
    if not isinstance(model, onnx.ModelProto):
        raise OnnxInputError(f"expected an onnx.ModelProto or a path to a .onnx file, got {type(model).__name__}")
    if not _looks_like_model(model):
        raise OnnxInputError(f"{label} is not an ONNX model (no graph or no opset import)")
    try:
        onnx.checker.check_model(skeleton(model))
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxInputError(f"{label} fails the ONNX checker: {first}; fix or re-export the model") from None


def _copy_fields(src, dst, skip: str) -> None:
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def skeleton(model: onnx.ModelProto, keep_below: int = 4096) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are graph inputs of the same type and shape
    instead, so that the checker and shape inference run fast (and past protobuf's 2 GiB) on
    models with big weights. Small initializers (shapes, scalars) keep their values."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    inputs = {i.name for i in out.graph.input}
    for t in model.graph.initializer:
        if tensor_nbytes(t) < keep_below:
            out.graph.initializer.append(t)
        elif t.name not in inputs:
            out.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def default_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    raise OnnxInputError("the model imports no version of the default ONNX domain")


def upgrade_opset(model: onnx.ModelProto, minimum: int) -> onnx.ModelProto:
    """Return ``model`` itself if its opset is >= ``minimum``, else a copy converted to ``minimum``."""
    version = default_opset(model)
    if version < MIN_SOURCE_OPSET:
        raise OnnxInputError(f"opset {version} is older than crisp supports (>= {MIN_SOURCE_OPSET}); re-export the model")
    if version >= minimum:
        return model
    try:
        converted = version_converter.convert_version(model, minimum)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError subclasses
        raise OnnxInputError(
            f"cannot upgrade the model from opset {version} to {minimum} with onnx's version converter ({exc}); "
            f"re-export it at opset >= {minimum} or use format='dense'"
        ) from None
    return converted


# ---------------------------------------------------------------------------------- constants
def overridable_inputs(model: onnx.ModelProto) -> set[str]:
    """The graph inputs a caller may feed. Below IR 4 every initializer must also be listed as a graph
    input (the model-zoo style), so there a name with an initializer is a constant; from IR 4 on an
    initializer that is also a graph input is only a default value, and stays overridable."""
    names = {i.name for i in model.graph.input}
    if model.ir_version < 4:
        names -= {t.name for t in model.graph.initializer}
    return names


def initializer_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node, or None if it holds something else than a tensor."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.asarray(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.asarray(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.asarray(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.asarray(list(attr.ints), dtype=np.int64)
    return None


def fold_constant_tensors(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
    """Evaluate the tensors ``names`` if they depend on constants only.

    Returns ``{name: array}`` for those that could be folded (initializers are read directly,
    Constant nodes from their attribute, anything else through onnx-graphsurgeon's
    ``fold_constants`` on a copy of the subgraph that produces them). The model is not changed.
    """
    inits = initializer_map(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    graph_inputs = overridable_inputs(model)
    found: dict[str, np.ndarray] = {}
    rest = []
    for name in names:
        if name in inits and name not in graph_inputs:
            found[name] = numpy_helper.to_array(inits[name])
        elif name in producers and producers[name].op_type == "Constant" and producers[name].domain in ("", "ai.onnx"):
            value = constant_node_value(producers[name])
            if value is not None:
                found[name] = value
        elif name in producers:
            rest.append(name)
    if rest:
        found.update(_fold_with_graphsurgeon(model, rest))
    return found


def _fold_with_graphsurgeon(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    wanted = [tensors[n] for n in names if n in tensors]
    graph.outputs = wanted
    graph.cleanup(remove_unused_graph_inputs=True)
    try:
        graph.fold_constants(error_ok=True)
    except Exception:  # graphsurgeon reports evaluation problems with assorted exception types
        return {}
    out = {}
    for name in names:
        t = graph.tensors().get(name)
        if isinstance(t, gs.Constant):
            out[name] = np.asarray(t.values)
    return out


def replace_with_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Make each tensor in ``values`` an initializer (in place) and drop the nodes that only fed it."""
    existing = initializer_map(model)
    for name, array in values.items():
        if name in existing:
            continue
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    remove_dead_nodes(model, set(values))


def remove_dead_nodes(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove the producers of ``candidates`` (tensors now provided by initializers) and, walking
    up, every node whose outputs nothing uses anymore. Other nodes are never touched."""
    graph = model.graph
    provided = {t.name for t in graph.initializer}
    suspects = set(candidates)
    while True:
        used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output} | _subgraph_inputs(graph)
        keep, removed = [], False
        for node in graph.node:
            outs = [o for o in node.output if o]
            if any(o in suspects for o in outs) and all(o in provided or o not in used for o in outs):
                suspects.update(i for i in node.input if i)
                removed = True
                continue
            keep.append(node)
        if not removed:
            return
        del graph.node[:]
        graph.node.extend(keep)


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names used inside subgraphs (If/Loop/Scan bodies) of ``graph``'s nodes."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names.update(i for n in sub.node for i in n.input)
                names |= _subgraph_inputs(sub)
    return names


def remove_unused_initializers(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the initializers ``names`` that no node (or subgraph, or graph output) uses anymore."""
    graph = model.graph
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output} | _subgraph_inputs(graph)
    for fn in model.functions:
        used.update(i for node in fn.node for i in node.input)
    drop = {n for n in names if n not in used}
    if not drop:
        return
    keep = [t for t in graph.initializer if t.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in drop]
    if len(inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(inputs)
    infos = [v for v in graph.value_info if v.name not in drop]
    del graph.value_info[:]
    graph.value_info.extend(infos)


# ---------------------------------------------------------------------------------- saving
def tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_nbytes(t) for t in model.graph.initializer)


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from its dims and type (reading ``raw_data`` would copy it)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        for e in t.external_data:
            if e.key == "length":
                return int(e.value)
    if t.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 0
        if itemsize:
            count = 1
            for d in t.dims:
                count *= int(d)
            return count * itemsize
    return numpy_helper.to_array(t).nbytes


check_output_path = resolve_output  # the one output-path check, for save_model and crisp optimize


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; with ``external_data`` (default: only when the
    tensors exceed what one protobuf file can hold) the tensors go to ``<name>.data`` beside it.
    A symlink is written through; SIGINT or SIGTERM during the write leaves no temporary file."""
    target = check_output_path(path)
    if external_data is None:
        external_data = tensor_bytes(model) > _EXTERNAL_THRESHOLD
    with terminate_as_interrupt():
        _write(model, target, external_data)
    return target


def _write(model: onnx.ModelProto, target: Path, external_data: bool) -> None:
    folder = target.parent if str(target.parent) else Path(".")
    try:
        tmp_dir = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OnnxOutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    tmp_model = Path(tmp_dir) / target.name
    data_name = target.name + ".data"
    try:
        if external_data:
            to_save = onnx.ModelProto()
            to_save.CopyFrom(model)
            onnx.save_model(to_save, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(Path(tmp_dir) / data_name, folder / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, target)
    except (OSError, ValueError) as exc:
        raise OnnxOutputError(f"cannot write {str(target)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        for leftover in Path(tmp_dir).glob("*"):
            leftover.unlink(missing_ok=True)
        os.rmdir(tmp_dir)
