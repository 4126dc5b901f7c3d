"""Exception types raised by crisp.

Every error a user can cause is a :class:`CrispError`; the subclasses say which stage
refused the input, and the message names the layer or node and what to do about it.
"""

from __future__ import annotations


class CrispError(Exception):
    """Base class of every error crisp raises on purpose."""


class ArgumentError(CrispError, ValueError):
    """A function argument or command-line option of the wrong type or out of range (checked by crisp.validate)."""


class PatternError(CrispError, ValueError):
    """An N:M + block pattern or a sparsity target that cannot be used."""


class FormatError(CrispError, ValueError):
    """A weight/mask pair that the compact format cannot hold, or a corrupt compact tensor."""


class ModelError(CrispError, ValueError):
    """The user's model cannot be compiled as given (bad weights, bad names, bad inputs)."""


class TraceError(CrispError, RuntimeError):
    """torch.fx could not trace the model."""


class PassOrderError(CrispError, RuntimeError):
    """A pass ran before the pass that provides what it needs."""


class VerificationError(CrispError, RuntimeError):
    """The compiled model does not compute what the masked dense model computes."""


class UnknownTargetError(CrispError, KeyError):
    """A backend name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""
