"""The ``.crisp`` file: one zip archive holding a compiled model that loads without its source.

Members (all checked against the SHA-256 sums in ``crisp.json`` on load):

- ``crisp.json``: format name and version, crisp/torch versions, target, the layer table, the
  report and the JSON-safe artifacts;
- ``tensors.pt``: masks and compact weights, a flat dict of tensors (read with
  ``torch.load(weights_only=True)``);
- ``reference.pt2``: the lowered graph (``crisp::hybrid_sparse_gemm`` on the reference kernel) as a
  ``torch.export`` program, batch dimension dynamic where torch can prove it;
- ``cpu.pt2``: for ``target="cpu"``, the graph on crisp's fast CPU kernels;
- ``model.onnx``: the compact ONNX export (``CompiledModel.to_onnx`` of a loaded model), and
  ``trace.bin`` for ``target="crisp-stc"``.

Nothing in the file is code: the graphs are torch.export's JSON, and every pickle inside is
first checked to load with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from crisp.errors import CrispError, FormatError
from crisp.fileio import atomic_write_bytes
from crisp.serialize_layers import layers_from_json, layers_to_json, report_from_json, report_to_json

log = logging.getLogger(__name__)

FORMAT = "crisp-compiled-model"
FORMAT_VERSION = 1
_META = "crisp.json"


def _example_inputs(graph_module: torch.fx.GraphModule) -> tuple:
    inputs = []
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            meta = node.meta.get("tensor_meta")
            if meta is None:
                raise CrispError("cannot save this compiled model: its graph has no input shapes")
            inputs.append(torch.zeros(tuple(meta.shape), dtype=meta.dtype))
    return tuple(inputs)


def export_program(module: torch.nn.Module, inputs: tuple, what: str) -> bytes:
    """``torch.export`` ``module`` (batch dimension dynamic if possible) and return the .pt2 bytes."""
    dynamic = tuple({0: torch.export.Dim.AUTO} if x.dim() else None for x in inputs)
    batch2 = tuple(torch.cat([x, x]) if x.dim() and x.shape[0] == 1 else x for x in inputs)  # a batch of 1 specializes
    try:
        try:
            ep = torch.export.export(module, batch2, dynamic_shapes=dynamic, strict=False)
        except Exception:  # shape-specialized graphs: keep the example batch size
            ep = torch.export.export(module, inputs, strict=False)
    except Exception as exc:
        raise CrispError(f"cannot save the {what} graph: torch.export failed ({type(exc).__name__}: {exc})") from exc
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def _tensor_bytes(tensors: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()


def write(path: str | os.PathLike, compiled: Any, *, onnx: bool = True) -> Path:
    """Write ``compiled`` (a CompiledModel) to ``path`` as one ``.crisp`` file; returns the path."""
    members: dict[str, bytes] = {}
    inputs = _example_inputs(compiled.graph_module)
    members["reference.pt2"] = export_program(compiled.graph_module, inputs, "reference")
    if compiled.module is not compiled.graph_module and compiled.target == "cpu":
        members["cpu.pt2"] = export_program(compiled.module, inputs, "cpu")
    layers, tensors = layers_to_json(compiled.layers)
    members["tensors.pt"] = _tensor_bytes(tensors)
    artifacts = {k: v for k, v in compiled.artifacts.items() if _json_safe(v)}
    trace = compiled.artifacts.get("trace")
    if trace is not None and hasattr(trace, "save"):
        members["trace.bin"] = _trace_bytes(trace)
    onnx_note = None
    if onnx or compiled.target == "onnx":
        try:
            members["model.onnx"] = compiled.to_onnx().SerializeToString()
        except CrispError as exc:
            onnx_note = str(exc)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "crisp_version": _crisp_version(),
        "torch_version": torch.__version__, "target": compiled.target, "layers": layers,
        "report": report_to_json(compiled.report), "artifacts": artifacts, "onnx_unavailable": onnx_note,
        "inputs": [[list(x.shape), str(x.dtype).removeprefix("torch.")] for x in inputs],
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(_META, json.dumps(meta, indent=1))
        for name, data in members.items():
            z.writestr(name, data)
    return atomic_write_bytes(path, buf.getvalue())


def _json_safe(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _trace_bytes(trace) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "trace.bin"
        trace.save(p)
        return p.read_bytes()


def _crisp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crisp")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------- reading
def read(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``.crisp`` file: its metadata, tensors, layers, report and member bytes.
    Raises FormatError naming the file for anything that is not an intact crisp file this
    version can read."""
    p = Path(path)
    where = f"{str(p)!r}"
    if not p.is_file():
        raise FormatError(f"{where} does not exist (write one with compiled.save(path) or crisp compile -o)")
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            if _META not in names:
                hint = " (it looks like a torch.export program; load it with torch.export.load)" if any(
                    n.endswith("archive_format") for n in names) else ""
                raise FormatError(f"{where} is not a crisp model file: it has no {_META}{hint}")
            meta = json.loads(z.read(_META))
            _check_header(meta, where)
            members = {name: z.read(name) for name in meta["sha256"]}
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{where} is not a readable crisp model file (truncated or corrupted: "
                          f"{type(exc).__name__}: {exc})") from exc
    for name, digest in meta["sha256"].items():
        if hashlib.sha256(members[name]).hexdigest() != digest:
            raise FormatError(f"{where} is corrupted: member {name!r} does not match its checksum")
    tensors = _safe_torch_load(members["tensors.pt"], where, "tensors.pt")
    return {
        "meta": meta, "members": members, "where": where,
        "layers": layers_from_json(meta["layers"], tensors, where), "report": report_from_json(meta["report"], where),
        "inputs": _inputs_from_json(meta.get("inputs"), where),
    }


def _inputs_from_json(inputs, where: str) -> list[tuple[torch.dtype, tuple[int, ...]]] | None:
    """The example inputs' (dtype, shape) a loaded model checks its calls against; None for files
    that do not record them."""
    if inputs is None:
        return None
    specs = []
    try:
        for shape, dtype_name in inputs:
            dtype = getattr(torch, str(dtype_name), None)
            if not isinstance(dtype, torch.dtype) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"{dtype_name!r} {shape!r}")
            specs.append((dtype, tuple(shape)))
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{where} has an invalid input record in its {_META} ({exc})") from exc
    return specs


def _check_header(meta, where: str) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FormatError(f"{where} is not a crisp model file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise FormatError(f"{where} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(f"{where} was written by crisp {meta.get('crisp_version')} in format version {version}; "
                          f"this crisp reads up to version {FORMAT_VERSION}: upgrade crisp to load it")
    for key in ("target", "layers", "report", "sha256"):
        if key not in meta:
            raise FormatError(f"{where} lacks {key!r} in its {_META}")


def _safe_torch_load(data: bytes, where: str, member: str):
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise FormatError(f"{where}: member {member!r} is not plain tensor data ({type(exc).__name__}); "
                          "crisp never loads pickled code") from exc


def load_program(data: bytes, where: str, member: str, saved_torch: str = "?") -> torch.nn.Module:
    """The module of an exported program, after checking that every pickle in it is plain data."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                blob = z.read(info)
                if info.filename.endswith((".pt", ".pkl")) or blob[:4] == b"PK\x03\x04":
                    _safe_torch_load(blob, where, f"{member}/{info.filename}")
        return torch.export.load(io.BytesIO(data)).module()
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{where}: the program {member!r} cannot be loaded ({type(exc).__name__}: {exc}); "
                          f"it was saved with torch {saved_torch} (this is torch {torch.__version__}) or is damaged") from exc
