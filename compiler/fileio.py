"""Write files atomically: a temporary file in the target directory, then ``os.replace``,
so a failure never leaves a half-written output behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from crisp.errors import CrispError


class OutputError(CrispError, OSError):
    """An output path that cannot be written."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, parents: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; ``parents=True`` first creates missing folders."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if parents:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write {str(target)!r}: cannot create {str(directory)!r}: {exc.strerror or exc}") from exc
    if not directory.is_dir():
        raise OutputError(f"cannot write {str(target)!r}: directory {str(directory)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str, *, parents: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``parents`` as in :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"), parents=parents)


def check_writable(path: str | os.PathLike, option: str, *, parents: bool = False) -> Path:
    """Refuse an output path before any work is done: ``option`` (e.g. ``"--json"``) names it in the
    message. The folder must exist (or, with ``parents``, be creatable) and be writable; the path
    must not be a folder."""
    target = Path(path)
    if str(path).strip() == "" or target.is_dir():
        raise OutputError(f"{option} {str(path)!r} is a folder or empty: give a file path")
    directory = target.parent if str(target.parent) else Path(".")
    probe = directory
    while parents and not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{option} {str(path)!r}: folder {str(directory)!r} does not exist; create it first")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {str(path)!r}: folder {str(probe)!r} is not writable")
    return target
