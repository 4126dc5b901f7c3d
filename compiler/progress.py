"""The ``crisp`` logger and the one progress bar: library code reports through these, and the
caller (the CLI, a notebook, an application's logging setup) decides where the messages go.

Modules log to ``logging.getLogger(__name__)`` (a child of ``crisp``) only when their
``progress=``/``verbose=`` flag is on; :func:`reporting` makes such messages visible on stderr when
nobody has configured logging, and :func:`progress` is the tqdm bar every loop uses.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

logger = logging.getLogger("crisp")


class StderrHandler(logging.Handler):
    """Writes each record as one line on the current ``sys.stderr``, through ``tqdm.write`` so
    that a progress bar being drawn is not broken."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a failing handler reports and never raises
            self.handleError(record)


@contextmanager
def log_to_stderr(level: int = logging.INFO) -> Iterator[logging.Handler]:
    """While inside, the crisp logger's records at ``level`` and above go to stderr as bare lines
    (what the CLI uses). Nested uses share one handler."""
    existing = next((h for h in logger.handlers if isinstance(h, StderrHandler)), None)
    if existing is not None:
        yield existing
        return
    handler = StderrHandler(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    before = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


@contextmanager
def reporting(enabled: bool) -> Iterator[None]:
    """While ``enabled``, make the crisp logger's INFO messages visible: on stderr when logging is
    not configured (no handler on ``crisp`` or the root logger), else through the configured
    handlers, with the ``crisp`` level lowered to INFO if the application left it unset."""
    if not enabled:
        yield
        return
    if not logger.hasHandlers():
        with log_to_stderr():
            yield
        return
    before = logger.level
    if before == logging.NOTSET and logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(before)


def progress(
    iterable: Iterable,
    *,
    enabled: bool | None,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    leave: bool = False,
) -> Iterable:
    """The progress bar of every crisp loop (tqdm on stderr). ``enabled``: True shows it, False
    returns ``iterable`` unchanged, None shows it only when stderr is a terminal."""
    if enabled is False:
        return iterable
    disable = None if enabled is None else False  # tqdm: None disables the bar off a terminal
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True, disable=disable)


def note(log: logging.Logger, enabled: bool | None, message: str, *args) -> None:
    """Log ``message`` at INFO on ``log`` when ``enabled``, visibly (see :func:`reporting`)."""
    if enabled:
        with reporting(True):
            log.info(message, *args, stacklevel=2)
