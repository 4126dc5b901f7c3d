"""Errors and warnings of the accelerator simulator and its instruction traces.

Every input a user can get wrong (an architecture name or file, a pattern the architecture
cannot run, a trace file) raises a :class:`crisp.errors.CrispError` subclass from here whose
message says what was wrong and what to do.
"""

from __future__ import annotations

from crisp.errors import CrispError


class ArchError(CrispError, ValueError):
    """An unknown architecture name, or an architecture description with bad fields."""


class UnsupportedPatternError(CrispError, ValueError):
    """A layer's sparsity pattern that the architecture cannot run as stored (``strict=True``)."""


class TraceFormatError(CrispError, ValueError):
    """A trace file that is corrupt, truncated, of another schema or of another version."""


class SimulationInputError(CrispError, TypeError):
    """``simulate`` was given something that is neither a trace, a trace file, a compiled
    model nor a list of layers."""


class PatternFallbackWarning(UserWarning):
    """A layer's N:M pattern runs as a denser pattern (or dense) on the chosen architecture."""
