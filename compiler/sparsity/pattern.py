"""The hybrid sparsity pattern: N of every M weights along the reduction axis, inside
B x B blocks of the GEMM view of a layer.

`Pattern` validates itself; `resolve_pattern` accepts what the public API accepts
(a `Pattern`, or a string such as ``"2:4"`` together with ``block=``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from crisp.errors import PatternError


def _check_nm(n: int, m: int) -> None:
    if m < 1:
        raise PatternError(f"pattern m must be >= 1, got m={m}")
    if n < 1:
        raise PatternError(f"pattern n must be >= 1 (n:m keeps n of every m), got n={n}")
    if n > m:
        raise PatternError(f"pattern {n}:{m} keeps more than it groups: n must be <= m")


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``: the ``n:m`` notation, checked (1 <= n <= m); raises PatternError."""
    parts = str(text).strip().split(":")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise PatternError(f"pattern must look like 'n:m' (e.g. '2:4'), got {text!r}")
    n, m = int(parts[0]), int(parts[1])
    _check_nm(n, m)
    return n, m


@dataclass(frozen=True)
class Pattern:
    """Keep ``n`` of every ``m`` consecutive reduction entries inside kept ``block`` x ``block`` tiles."""

    n: int
    m: int
    block: int

    def __post_init__(self) -> None:
        for field in ("n", "m", "block"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PatternError(f"pattern {field} must be an integer, got {value!r}")
        _check_nm(self.n, self.m)
        if self.block < 1 or self.block % self.m:
            raise PatternError(
                f"block {self.block} must be a positive multiple of m={self.m} "
                f"(try block={self.m * max(1, round(self.block / self.m))})"
            )

    @classmethod
    def parse(cls, text: str, block: int) -> "Pattern":
        """Parse ``"n:m"`` (e.g. ``"2:4"``) into a Pattern with the given block size."""
        n, m = parse_nm(text)
        return cls(n, m, block)

    @property
    def nm_density(self) -> float:
        """Share of weights an N:M group keeps."""
        return self.n / self.m

    @property
    def min_sparsity(self) -> float:
        """The sparsity N:M alone reaches; block pruning goes beyond it."""
        return 1.0 - self.n / self.m

    @property
    def offset_bits(self) -> int:
        """Bits the compact format stores per kept value to say where it sits in its group."""
        return math.ceil(math.log2(self.m)) if self.m > 1 else 0

    @property
    def groups_per_block(self) -> int:
        return self.block // self.m

    @property
    def values_per_block_row(self) -> int:
        """Values one weight row keeps inside one kept block."""
        return self.groups_per_block * self.n

    def __str__(self) -> str:
        return f"{self.n}:{self.m} in {self.block}x{self.block} blocks"


def resolve_pattern(pattern: "Pattern | str", block: int | None = None) -> Pattern:
    """Turn the API's ``pattern=`` / ``block=`` arguments into a validated Pattern."""
    if isinstance(pattern, Pattern):
        if block is not None and block != pattern.block:
            raise PatternError(
                f"block={block} disagrees with the Pattern's block={pattern.block}; pass one of them"
            )
        return pattern
    if isinstance(pattern, str):
        return Pattern.parse(pattern, 32 if block is None else block)
    raise PatternError(f"pattern must be a crisp.Pattern or a string like '2:4', got {pattern!r}")


def check_sparsity(sparsity: float, pattern: Pattern) -> float:
    """Validate a global sparsity target against what the pattern can express."""
    if isinstance(sparsity, (str, bytes, bool)) or not isinstance(sparsity, numbers.Real):
        raise PatternError(f"sparsity must be a number in [0, 1), e.g. 0.9, got {sparsity!r} ({type(sparsity).__name__})")
    value = float(sparsity)
    if not math.isfinite(value) or value >= 1.0:
        raise PatternError(f"sparsity must be below 1 (1 would remove every weight), got {sparsity!r}")
    if value < pattern.min_sparsity - 1e-9:
        raise PatternError(
            f"sparsity {value:g} is below what {pattern.n}:{pattern.m} alone gives "
            f"({pattern.min_sparsity:g}); use sparsity >= {pattern.min_sparsity:g} "
            f"or a denser pattern such as {min(pattern.m, pattern.n + 1)}:{pattern.m}"
        )
    return max(value, pattern.min_sparsity)
