"""Where crisp may write an ONNX model: output paths checked before any work (never a folder, a FIFO, a
device, the input, its external-data files or the report), symlinks written through, and SIGTERM during
a write handled like Ctrl-C so that no temporary file is left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
from pathlib import Path

import onnx

from crisp.fileio import OutputError


class OnnxOutputError(OutputError):
    """The ONNX output cannot be written where asked."""


def resolve_output(path: str | os.PathLike) -> Path:
    """The file crisp will write for ``path``: a symlink is followed to its target (written through,
    never replaced). Fails before any work on a folder, a FIFO, a device or socket, or a missing or
    read-only folder."""
    given = Path(path)
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    if target.is_dir():
        raise OnnxOutputError(f"output path {str(given)!r} is a folder; give a file name such as model.onnx")
    if target.exists() and not stat.S_ISREG(target.stat().st_mode):
        raise OnnxOutputError(f"output path {str(given)!r} is not a regular file (a FIFO, device or socket); "
                              "give a file name such as model.onnx")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxOutputError(f"cannot write {str(given)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxOutputError(f"cannot write {str(given)!r}: folder {str(folder)!r} is not writable")
    return target


def external_data_files(model_path: str | os.PathLike) -> list[Path]:
    """The external-data files an ONNX file refers to (read without loading the data)."""
    p = Path(model_path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception:  # an unreadable input is reported by the loader, with its own message
        return []
    found: set[str] = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            found.update(e.value for e in t.external_data if e.key == "location")
    return [p.parent / name for name in sorted(found)]


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_distinct_paths(input_path: str | os.PathLike, output: str | os.PathLike, report: str | os.PathLike | None = None,
                         *, external_data: bool = False) -> None:
    """Refuse, before any work, an output or report path that would overwrite the input model, one of
    its external-data files, or each other (the model's own ``.data`` file included)."""
    source = Path(input_path)
    protected = [("the input model", source)] + [("the input's external data", f) for f in external_data_files(source)]
    out = resolve_output(output)
    writes = [("-o", out)] + ([("-o's external data", out.with_name(out.name + ".data"))] if external_data else [])
    for what, path in writes:
        for kind, other in protected:
            if _same(path, other):
                raise OnnxOutputError(f"{what} path {str(path)!r} is {kind} ({str(other)!r}); crisp never overwrites "
                                      "its input: write the optimized model to another file")
    if report is not None:
        rep = resolve_output(report)
        for kind, other in protected + [("the output model", out)] + writes[1:]:
            if _same(rep, other):
                raise OnnxOutputError(f"--report path {str(report)!r} is {kind} ({str(other)!r}); "
                                      "give the report its own file, e.g. report.json")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a write (handled like Ctrl-C: temporary files are removed)."""


@contextlib.contextmanager
def terminate_as_interrupt():
    """While the block runs, SIGTERM raises :class:`Terminated` (so ``finally`` clauses clean up);
    afterwards the previous handler is back and a caught SIGTERM is delivered again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, previous)
        os.kill(os.getpid(), signal.SIGTERM)  # die of SIGTERM as the sender asked, after the cleanup
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
