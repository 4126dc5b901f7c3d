"""`Arch`: an accelerator described as data (resources, dataflow, sparse features, energy).

Two dataflows cover the four designs the project compares:

- ``"simd"``: weight-stationary SIMD tensor cores, like NVIDIA's. Each core computes
  ``core_rows`` output rows at once; each row has ``macs_per_core / core_rows`` multiplier
  lanes along the reduction axis. With a native ``n:m`` pattern a row covers
  ``floor(lanes / n)`` groups of m per cycle (a MUX picks the n activations of each group).
  ``block_skipping`` skips pruned blocks and the activations only they need. TC, NVIDIA-STC,
  CRISP-STC and Sparseloop's STC family are all ``simd``.
- ``"outer-product"``: DSTC's output-stationary outer product of compressed weight columns and
  activation rows on a ``sqrt(macs_per_core)``-square array per core, with activations at
  ``activation_density``.

Bandwidths are bytes per cycle; sizes in bytes; energies in the attached :class:`EnergyTable`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from crisp.errors import PatternError
from crisp.runtime.simulator.energy import EnergyTable, STC_45NM
from crisp.runtime.simulator.errors import ArchError
from crisp.sparsity.pattern import parse_nm as pattern_nm
from crisp.validate import check_int, check_number

DATAFLOWS = ("simd", "outer-product")
# Sane ranges of every numeric field (the message names the field and its range): far beyond any real
# design, small enough that cycle counts stay exact integers and sizes never overflow.
INT_LIMITS = {"n_cores": 2**20, "macs_per_core": 2**24, "rf_bytes": 2**40, "smem_bytes": 2**44, "core_rows": 2**16,
              "gather_lanes": 2**16, "word_bytes": 64}
FLOAT_LIMITS = {"smem_read_bw": (1e-3, 1e12), "smem_write_bw": (1e-3, 1e12), "dram_read_bw": (1e-3, 1e12),
                "dram_write_bw": (1e-3, 1e12), "clock_ghz": (1e-3, 1e3), "activation_density": (1e-6, 1.0),
                "smem_resident_fraction": (1e-6, 1.0)}


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)`` (:func:`crisp.sparsity.pattern.parse_nm`); raises ArchError on anything else."""
    try:
        return pattern_nm(text)
    except PatternError as exc:
        raise ArchError(f"architecture pattern {text!r} needs 1 <= n <= m in the form 'n:m' (e.g. '2:4'): {exc}") from None


@dataclass(frozen=True)
class Arch:
    """One accelerator configuration. Construct it directly, from a preset
    (:func:`crisp.runtime.simulator.get_arch`) or from a TOML/JSON file (:func:`load_arch`)."""

    name: str
    dataflow: str  # "simd" or "outer-product"
    n_cores: int
    macs_per_core: int
    rf_bytes: int  # accumulator register file per core
    smem_bytes: int
    smem_read_bw: float  # bytes per cycle
    smem_write_bw: float
    dram_read_bw: float
    dram_write_bw: float
    patterns: tuple[str, ...] = ()  # native n:m patterns, e.g. ("1:4", "2:4", "3:4")
    block_skipping: bool = False
    core_rows: int = 16  # simd: output rows a core computes at once
    activation_density: float = 1.0  # outer-product: share of non-zero activations
    gather_lanes: int = 4  # outer-product: weight tile height per core, in array lanes
    smem_resident_fraction: float = 0.75  # share of SMEM an operand may keep resident
    word_bytes: int = 1
    clock_ghz: float = 1.0
    energy: EnergyTable = field(default_factory=lambda: STC_45NM)
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.patterns, str) or not isinstance(self.patterns, (list, tuple)) \
                or not all(isinstance(p, str) for p in self.patterns):
            raise ArchError(f"architecture {self.name!r}: patterns must be a list of 'n:m' strings, got {self.patterns!r}")
        object.__setattr__(self, "patterns", tuple(p.strip() for p in self.patterns))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ArchError(f"architecture name must be a non-empty string, got {self.name!r}")
        where = f"architecture {self.name!r}"
        if not isinstance(self.description, str):
            raise ArchError(f"{where}: description must be a string, got {self.description!r}")
        if not isinstance(self.dataflow, str) or self.dataflow not in DATAFLOWS:
            raise ArchError(f"{where}: dataflow must be one of {', '.join(DATAFLOWS)}, got {self.dataflow!r}")
        if not isinstance(self.block_skipping, bool):
            raise ArchError(f"{where}: block_skipping must be true or false, got {self.block_skipping!r}")
        for name, top in INT_LIMITS.items():
            check_int(f"{where}: {name}", getattr(self, name), minimum=1, maximum=top, error=ArchError)
        for name, (low, top) in FLOAT_LIMITS.items():
            check_number(f"{where}: {name}", getattr(self, name), minimum=low, maximum=top, positive=True, error=ArchError)
        if not isinstance(self.energy, EnergyTable):
            raise ArchError(f"{where}: energy must be an EnergyTable, got {type(self.energy).__name__}")
        self.energy.validate(where)
        if self.dataflow == "simd":
            if self.macs_per_core % self.core_rows:
                raise ArchError(
                    f"{where}: macs_per_core={self.macs_per_core} must be a multiple of core_rows={self.core_rows}"
                )
            for text in self.patterns:
                n, _ = parse_nm(text)
                if n > self.lanes_per_row:
                    raise ArchError(
                        f"{where}: pattern {text} needs {n} lanes per row but a core row has "
                        f"{self.lanes_per_row} (macs_per_core / core_rows); lower core_rows"
                    )
            if self.rf_bytes < self.core_rows * self.word_bytes:
                raise ArchError(f"{where}: rf_bytes={self.rf_bytes} cannot hold one column of {self.core_rows} accumulators")
        else:
            side = math.isqrt(self.macs_per_core)
            if side * side != self.macs_per_core:
                raise ArchError(f"{where}: outer-product needs a square array; macs_per_core={self.macs_per_core} is not a square")
            if self.rf_bytes < self.tile_m * self.word_bytes:
                raise ArchError(f"{where}: rf_bytes={self.rf_bytes} cannot hold a {self.tile_m}-row output tile")
            if self.patterns or self.block_skipping:
                raise ArchError(f"{where}: outer-product takes unstructured sparsity; leave patterns and block_skipping unset")

    # ------------------------------------------------------------------ derived geometry
    @property
    def total_macs(self) -> int:
        return self.n_cores * self.macs_per_core

    @property
    def lanes_per_row(self) -> int:
        """simd: multiplier lanes of one output row along the reduction axis."""
        return self.macs_per_core // self.core_rows

    @property
    def native_patterns(self) -> tuple[tuple[int, int], ...]:
        return tuple(parse_nm(p) for p in self.patterns)

    @property
    def n_tile(self) -> int:
        """simd: output positions whose accumulators a core's RF holds (its N tile)."""
        return self.rf_bytes // (self.core_rows * self.word_bytes)

    @property
    def array_side(self) -> int:
        """outer-product: side of the square MAC array of one core."""
        return math.isqrt(self.macs_per_core)

    @property
    def tile_m(self) -> int:
        """outer-product: weight rows of one core's output tile."""
        return self.gather_lanes * self.array_side

    @property
    def tile_n(self) -> int:
        """outer-product: output positions of one core's output tile (the rest of its RF)."""
        return max(1, self.rf_bytes // (self.tile_m * self.word_bytes))

    def lowering_key(self) -> tuple:
        """The fields that change the instruction schedule (bandwidth and energy do not)."""
        return (
            self.dataflow, self.n_cores, self.macs_per_core, self.rf_bytes, self.smem_bytes,
            self.patterns, self.block_skipping, self.core_rows, self.activation_density,
            self.gather_lanes, self.smem_resident_fraction, self.word_bytes,
        )

    def with_(self, **changes) -> "Arch":
        """A copy with some fields changed (validated), e.g. ``arch.with_(smem_read_bw=21)``."""
        if "energy" in changes and isinstance(changes["energy"], dict):
            changes["energy"] = replace(self.energy, **changes["energy"])
        return replace(self, **changes)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["patterns"] = list(self.patterns)
        out["energy"] = self.energy.to_dict()
        return out

    def summary(self) -> str:
        feats = []
        if self.dataflow == "simd":
            feats.append(f"{self.core_rows} rows x {self.lanes_per_row} lanes per core")
            feats.append("patterns " + ("/".join(self.patterns) if self.patterns else "dense only"))
            if self.block_skipping:
                feats.append("block skipping")
        else:
            feats.append(f"{self.array_side}x{self.array_side} outer product per core")
            feats.append(f"activation density {self.activation_density:g}")
        return (
            f"{self.name}: {self.n_cores} cores x {self.macs_per_core} MACs, RF {self.rf_bytes} B/core, "
            f"SMEM {self.smem_bytes // 1024} KiB @ {self.smem_read_bw:g}/{self.smem_write_bw:g} B/cycle, "
            f"DRAM {self.dram_read_bw:g}/{self.dram_write_bw:g} B/cycle, {', '.join(feats)}, "
            f"energy table {self.energy.name}"
        )
