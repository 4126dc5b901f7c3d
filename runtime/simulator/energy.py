"""Energy per action (pJ) and the energy of a layer from its access counts.

The tables are the public 45 nm tables of the Sparseloop MICRO-2022 artifact (fig. 15 STC
case study): one for its dense tensor core (TC), one shared by the STC family, one for DSTC.
Counting follows Sparseloop's rules (reference/sparseloop-fig15-stc.txt, sec. 6 R3):

- MAC: actual MACs x ``mac``;
- LRF (per-PE operand registers): operand fills and reads x ``lrf`` per word, plus metadata
  x bits/8 x ``lrf_meta``;
- RF (accumulators): Z updates x (``rf_read`` + ``rf_write``);
- SMEM data: bytes / ``smem_row_bytes`` x row energy (read or write);
- SMEM metadata: bits / 64 x metadata-row energy (read or write);
- DRAM: data bytes x ``dram_per_byte``; metadata moved to and from DRAM costs bandwidth only,
  as in Sparseloop (its energy tables have no DRAM metadata action).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from crisp.runtime.simulator.errors import ArchError
from crisp.validate import check_int, check_number

COMPONENTS = ("mac", "lrf", "rf", "smem_data", "smem_meta", "dram")


@dataclass(frozen=True)
class EnergyTable:
    """Energy per action in pJ."""

    name: str = "sl45-stc"
    mac: float = 0.5608
    lrf: float = 0.072
    lrf_meta: float = 0.072
    rf_read: float = 1.65889
    rf_write: float = 1.67589
    smem_read_row: float = 285.71464
    smem_write_row: float = 316.96744
    smem_row_bytes: int = 64
    smem_meta_read: float = 25.8695
    smem_meta_write: float = 19.6486
    dram_per_byte: float = 64.0

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, where: str = "energy table") -> None:
        """Every energy a finite number of pJ in [0, 1e9]; ``smem_row_bytes`` an integer in [1, 2**20]."""
        if not isinstance(self.name, str) or not self.name:
            raise ArchError(f"{where}: energy.name must be a non-empty string, got {self.name!r}")
        for key, value in asdict(self).items():
            if key == "smem_row_bytes":
                check_int(f"{where}: energy.smem_row_bytes", value, minimum=1, maximum=MAX_ROW_BYTES, error=ArchError)
            elif key != "name":
                check_number(f"{where}: energy.{key}", value, minimum=0.0, maximum=MAX_PJ, error=ArchError)


MAX_PJ = 1e9  # per action; the 45 nm tables are below 1e3
MAX_ROW_BYTES = 2**20


# Sparseloop artifact, ERT_summary.yaml of each design (sec. 3 of the reference file).
STC_45NM = EnergyTable()
TC_45NM = EnergyTable(
    name="sl45-tc",
    mac=0.44688,
    lrf=0.02435,
    lrf_meta=0.02435,
    rf_read=3.1647,
    rf_write=3.20183,
    smem_read_row=536.05005,
    smem_write_row=599.806,
    smem_meta_read=0.0,
    smem_meta_write=0.0,
)
# DSTC's LRF is a 16-bit row holding two int8 words: 0.49218 pJ per row -> per word.
DSTC_45NM = EnergyTable(name="sl45-dstc", lrf=0.49218 / 2, lrf_meta=0.18108)

ENERGY_TABLES = {t.name: t for t in (STC_45NM, TC_45NM, DSTC_45NM)}


@dataclass(frozen=True)
class AccessCounts:
    """What one layer did, counted in the units the energy table prices."""

    macs: float = 0.0  # actual MACs
    lrf_words: float = 0.0  # operand words written to and read from the per-PE registers
    lrf_meta_bits: float = 0.0
    rf_updates: float = 0.0  # accumulator read-modify-writes
    smem_read_bytes: float = 0.0
    smem_write_bytes: float = 0.0
    smem_meta_read_bits: float = 0.0
    smem_meta_write_bits: float = 0.0
    dram_data_bytes: float = 0.0  # reads and writes of data (metadata excluded)


def energy_pj(counts: AccessCounts, table: EnergyTable) -> dict[str, float]:
    """Energy of one layer by component, in pJ."""
    row = float(table.smem_row_bytes)
    return {
        "mac": counts.macs * table.mac,
        "lrf": counts.lrf_words * table.lrf + counts.lrf_meta_bits / 8.0 * table.lrf_meta,
        "rf": counts.rf_updates * (table.rf_read + table.rf_write),
        "smem_data": counts.smem_read_bytes / row * table.smem_read_row
        + counts.smem_write_bytes / row * table.smem_write_row,
        "smem_meta": counts.smem_meta_read_bits / 64.0 * table.smem_meta_read
        + counts.smem_meta_write_bits / 64.0 * table.smem_meta_write,
        "dram": counts.dram_data_bytes * table.dram_per_byte,
    }
