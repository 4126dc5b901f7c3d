"""The checks crisp runs on every model it writes: onnx's checker with full shape inference, then an
onnxruntime session on the result itself. A failure is a crisp bug, reported with the node it names."""

from __future__ import annotations

import re

import onnx
import onnxruntime as ort

from crisp.errors import CrispError
from crisp.onnx.io import PROTOBUF_LIMIT, skeleton

_NODE_NAME = re.compile(r"[Nn]ode \(([^)]*)\)|node[: ]+'?([\w./:-]+)'?")


class OnnxInternalError(CrispError):
    """crisp wrote a model that onnx's checker or onnxruntime rejects: a bug in crisp, not in the input."""


def _named_node(message: str, rewritten: list[str]) -> str:
    found = _NODE_NAME.search(message)
    if found:
        return f"node {found.group(1) or found.group(2)!r}"
    if rewritten:
        shown = ", ".join(repr(n) for n in rewritten[:5]) + (" ..." if len(rewritten) > 5 else "")
        return f"one of the rewritten nodes ({shown})"
    return "the graph"


def _fail(stage: str, exc: Exception, rewritten: list[str]) -> OnnxInternalError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OnnxInternalError(
        f"internal error (a crisp bug): the optimized model fails {stage} at {_named_node(str(exc), rewritten)}: "
        f"{text}. No output was written and the input is unchanged; please report this with the model, "
        "or keep the failing layers dense with --exclude NODE"
    )


def verify_output(model: onnx.ModelProto, rewritten: list[str], *, runtime: bool = True) -> None:
    """Raise OnnxInternalError unless ``model`` passes ``onnx.checker.check_model(full_check=True)``
    and (``runtime``) onnxruntime creates a session for it. ``rewritten``: the nodes crisp changed,
    named when the failure message names none. Models past protobuf's 2 GiB skip the session."""
    try:
        onnx.checker.check_model(skeleton(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise _fail("the ONNX checker", exc, rewritten) from exc
    if not runtime or model.ByteSize() >= PROTOBUF_LIMIT:
        return
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    try:
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, NotImplemented)
        raise _fail("onnxruntime's session creation", exc, rewritten) from exc
