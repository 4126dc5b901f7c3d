"""`CompiledModel`: what ``crisp.compile`` returns — callable like the model, with the lowered
graph, the masks by parameter name, the per-layer report and the backend's artifacts."""

from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import fx, nn

from crisp import serialize
from crisp.backends.onnx_backend import OnnxRuntimeModule, export_compiled_to_onnx
from crisp.backends.stc_trace import Trace
from crisp.errors import CrispError, FormatError, ModelError
from crisp.fileio import atomic_write_bytes
from crisp.ir.layer_info import LayerInfo
from crisp.report import Report
from crisp.runtime import fast_kernel
from crisp.simulate_api import simulate
from crisp.validate import InputSpec


class CompiledModel:
    def __init__(
        self,
        module: nn.Module,
        graph_module: fx.GraphModule,
        layers: list[LayerInfo],
        report: Report,
        target: str,
        artifacts: dict[str, Any] | None = None,
    ):
        self.module = module
        self.graph_module = graph_module
        self.layers = layers
        self.report = report
        self.target = target
        self.artifacts = artifacts or {}
        self.input_spec: InputSpec | None = None  # set by crisp.compile and crisp.load: what a call must pass

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Original parameter name -> bool mask of that weight's shape, for every pruned layer."""
        return {info.weight_name: info.mask for info in self.layers if info.mask is not None}

    @property
    def sparsity(self) -> float | None:
        return self.report.achieved_sparsity

    def to_onnx(self, path=None, **kwargs):
        """Export to crisp's compact ONNX form (stock onnxruntime runs it); returns the ModelProto."""
        return export_compiled_to_onnx(self, path, **kwargs)

    def simulate(self, arch="crisp-stc", *, strict: bool = False):
        """Replay this model on an accelerator model (see :func:`crisp.simulate`)."""
        return simulate(self, arch, strict=strict)

    def save(self, path: str | os.PathLike, *, onnx: bool = True) -> Path:
        """Write this model to one ``.crisp`` file that :func:`crisp.load` reads in any process, without
        the model's source (see :mod:`crisp.serialize`); ``onnx=False`` leaves out the ONNX export
        (a loaded model then cannot ``to_onnx``)."""
        return serialize.write(path, self, onnx=onnx)

    def __reduce_ex__(self, protocol):
        raise CrispError("a CompiledModel cannot be pickled or torch.save()d: use compiled.save('model.crisp') "
                         "and crisp.load('model.crisp')")

    def __call__(self, *args, **kwargs):
        """Run the compiled model; inputs that differ from the compiled ones (type, dtype, rank, sizes
        other than the batch) raise a ModelError naming the input before any kernel runs."""
        if kwargs:
            args = self._positional(args, kwargs)
        if self.input_spec is not None:
            self.input_spec.check(args)
        with torch.no_grad():
            return self.module(*args)

    def _positional(self, args: tuple, kwargs: dict) -> tuple:
        """Keyword inputs put in the order of the graph's inputs; a name it lacks is a ModelError."""
        inputs = [n for n in self.graph_module.graph.nodes if n.op == "placeholder"]
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        signature = inspect.Signature([inspect.Parameter(n.target, kind, **({"default": n.args[0]} if n.args else {}))
                                       for n in inputs])
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ModelError(f"the compiled model takes the inputs ({', '.join(n.target for n in inputs)}): {exc}") from None
        bound.apply_defaults()
        return tuple(bound.arguments.values())

    def __repr__(self) -> str:
        pruned = sum(1 for i in self.layers if i.compact is not None)
        return (
            f"CompiledModel(target={self.target!r}, pattern={self.report.pattern!r}, layers pruned={pruned}/"
            f"{len(self.layers)}, sparsity={self.report.achieved_sparsity})"
        )


class _LoadedOnnx:
    """``to_onnx`` of a loaded model: the ONNX export stored in its file."""

    def __init__(self, data: bytes | None, note: str | None):
        self.data, self.note = data, note

    def __call__(self, path=None, **kwargs):
        if self.data is None:
            raise CrispError(f"this loaded model was saved without its ONNX export ({self.note or 'onnx=False'}); "
                             "compile it again and call to_onnx before saving")
        if kwargs:
            raise CrispError(f"a loaded model exports the ONNX model stored in its file; options {sorted(kwargs)} "
                             "apply only when exporting a freshly compiled model")
        model = onnx.load_from_string(self.data)
        if path is not None:
            atomic_write_bytes(path, self.data)
        return model


def load(path: str | os.PathLike) -> CompiledModel:
    """Read a ``.crisp`` file written by :meth:`CompiledModel.save` (or ``crisp compile -o``) and
    return a working CompiledModel on the target it was saved for. No code from the file runs; a
    truncated, corrupted, foreign or newer-format file raises :class:`crisp.FormatError`."""
    data = serialize.read(path)
    meta, members, where = data["meta"], data["members"], data["where"]
    saved_torch = meta.get("torch_version", "?")
    reference = serialize.load_program(members["reference.pt2"], where, "reference.pt2", saved_torch)
    module = reference
    target = meta["target"]
    artifacts = dict(meta.get("artifacts") or {})
    if "cpu.pt2" in members:
        if fast_kernel.available():
            module = serialize.load_program(members["cpu.pt2"], where, "cpu.pt2", saved_torch)
        else:
            warnings.warn(f"{where}: crisp's fast CPU kernels are unavailable here; running the reference kernel")
            artifacts["cpu_kernels"] = "reference"
    if "trace.bin" in members:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "trace.bin").write_bytes(members["trace.bin"])
            artifacts["trace"] = Trace.load(Path(d) / "trace.bin")
    onnx_bytes = members.get("model.onnx")
    if target == "onnx":
        if onnx_bytes is None:
            raise FormatError(f"{where}: a model saved for target 'onnx' lacks its model.onnx member")
        model = onnx.load_from_string(onnx_bytes)
        module, artifacts["onnx_model"] = OnnxRuntimeModule(model), model
    compiled = CompiledModel(module, reference, data["layers"], data["report"], target, artifacts)
    if data["inputs"] is not None:  # calls are checked as on the freshly compiled model
        compiled.input_spec = InputSpec(data["inputs"])
    compiled.to_onnx = _LoadedOnnx(onnx_bytes, meta.get("onnx_unavailable"))
    compiled.source_file = str(path)
    compiled.file_info = {k: v for k, v in meta.items() if k not in ("layers", "report", "sha256")}
    return compiled
