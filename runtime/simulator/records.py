"""The instruction record layout shared by the lowering, the replay and the trace file.

Records are columns (numpy arrays of equal length), one row per instruction:

- ``seq``: strictly increasing over the whole trace; ``layer``: index into the layer table;
- ``op`` (see :data:`OPS`), ``unit`` (see :func:`unit_names`), ``operand`` (see :data:`OPERANDS`);
- ``m0, n0, k0`` / ``mt, nt, kt``: origin and extent of the tile in M (rows), N (positions), K;
- ``bytes`` / ``meta_bytes``: data and metadata bytes the instruction moves;
- ``macs_alg`` / ``macs_act``: dense-loop-nest MACs of the tile / MACs actually performed
  (MMA ops only); ``cycles``: cycles the MMA occupies its core (MMA ops only);
- ``nm_n`` / ``nm_m``: the n:m an MMA_SP runs (0 elsewhere, and for DSTC's unstructured MMA_SP);
- ``block_row`` / ``block_col``: the weight block an MMA_SP works on (-1: none);
- ``start`` / ``end``: cycle interval from the timing pass of the replay.
"""

from __future__ import annotations

import numpy as np

OPS = ("LD_DRAM", "LD_SMEM", "LD_META", "MMA", "MMA_SP", "ST", "SYNC")
OP = {name: i for i, name in enumerate(OPS)}
OPERANDS = ("-", "A", "B", "Z")
OPERAND = {name: i for i, name in enumerate(OPERANDS)}
FIXED_UNITS = ("dma", "wb", "smem", "ctrl")  # DRAM->SMEM loads, Z write-back, SMEM->core reads, control
UNIT = {name: i for i, name in enumerate(FIXED_UNITS)}
FIRST_CORE_UNIT = len(FIXED_UNITS)

COLUMNS: dict[str, type] = {
    "seq": np.int64, "layer": np.int32, "op": np.uint8, "unit": np.uint8, "operand": np.uint8,
    "m0": np.int64, "n0": np.int64, "k0": np.int64, "mt": np.int64, "nt": np.int64, "kt": np.int64,
    "bytes": np.int64, "meta_bytes": np.int64, "macs_alg": np.int64, "macs_act": np.int64,
    "cycles": np.int64, "nm_n": np.uint8, "nm_m": np.uint8, "block_row": np.int32, "block_col": np.int32,
    "start": np.int64, "end": np.int64,
}
DEFAULTS = {"block_row": -1, "block_col": -1}


def unit_names(n_cores: int) -> list[str]:
    return list(FIXED_UNITS) + [f"tc{i}" for i in range(n_cores)]


def empty_columns() -> dict[str, np.ndarray]:
    return {name: np.zeros(0, dtype=dt) for name, dt in COLUMNS.items()}


class RecordBuilder:
    """Collects record groups for one layer, each with a sort key, then orders them."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, dict]] = []

    def add(self, key, **cols) -> None:
        key = np.asarray(key, dtype=np.int64).reshape(-1)
        if key.size:
            self._parts.append((key, cols))

    def build(self, layer: int) -> dict[str, np.ndarray]:
        if not self._parts:
            return empty_columns()
        keys = np.concatenate([k for k, _ in self._parts])
        order = np.argsort(keys, kind="stable")
        out = {}
        for name, dt in COLUMNS.items():
            if name in ("seq", "layer", "start", "end"):
                continue
            pieces = []
            for key, cols in self._parts:
                v = cols.get(name, DEFAULTS.get(name, 0))
                pieces.append(np.broadcast_to(np.asarray(v, dtype=dt), key.shape))
            out[name] = np.concatenate(pieces)[order]
        n = keys.size
        out["layer"] = np.full(n, layer, dtype=np.int32)
        out["seq"] = np.zeros(n, dtype=np.int64)
        out["start"] = np.zeros(n, dtype=np.int64)
        out["end"] = np.zeros(n, dtype=np.int64)
        return out


def concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return empty_columns()
    cols = {name: np.concatenate([p[name] for p in parts]).astype(dt, copy=False) for name, dt in COLUMNS.items()}
    cols["seq"] = np.arange(cols["op"].size, dtype=np.int64)
    return cols
