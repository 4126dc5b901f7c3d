"""CRISP-STC instruction traces: build them from layers, save and load them.

A :class:`Trace` is the tile schedule of a model on one architecture: a versioned header
(schema, version, crisp version, architecture, pattern, the layer table with each layer's
execution plan, and the totals of the simulator's replay) and one record per instruction,
stored as columns (see :mod:`crisp.runtime.simulator.records`). It also embeds each layer's
kept-block layout, so a trace can be re-lowered for another architecture.

File layout (little-endian)::

    b"CRISPTRC"  u64 header_length  u32 header_crc32  header (UTF-8 JSON)  blob  blob ...

Every column and layer array is one zlib-compressed blob of its smallest integer dtype
(``seq``, ``start`` and ``end`` delta-encoded); the header lists each blob's name, dtype,
encoding, element count, offset, size and CRC-32. A million-instruction trace takes a few MB.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from crisp.errors import PatternError
from crisp.fileio import atomic_write_bytes
from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.arch_io import arch_from_dict
from crisp.runtime.simulator.engine import check_fallbacks, result_from, run_specs, arch_notes
from crisp.runtime.simulator.errors import ArchError, TraceFormatError
from crisp.validate import check_int, check_number
from crisp.runtime.simulator.arch_io import get_arch
from crisp.runtime.simulator.records import COLUMNS, OPERANDS, OPS, unit_names
from crisp.runtime.simulator.replay import replay
from crisp.runtime.simulator.result import SimulationResult
from crisp.runtime.simulator.workload import LayerSpec, offset_bits, specs_from_layers
from crisp.sparsity.pattern import Pattern, parse_nm

SCHEMA = "crisp-stc-trace"
VERSION = "1.0"
MAGIC = b"CRISPTRC"
_PREFIX = 8 + 8 + 4  # magic, header length, header CRC-32
_DELTA = ("seq", "start", "end")
_LAYER_ARRAYS = ("block_cols", "row_block_nnz", "row_nnz")


def _crisp_version() -> str:
    try:
        return metadata.version("crisp")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


@dataclass
class Trace:
    """An instruction trace: ``header`` (JSON-able), ``columns`` (numpy arrays), layer ``specs``."""

    header: dict
    columns: dict[str, np.ndarray]
    specs: list[LayerSpec] = field(repr=False, default_factory=list)

    # ------------------------------------------------------------------ views
    @property
    def arch(self) -> Arch:
        try:
            return arch_from_dict(self.header["arch"], source="trace header")
        except ArchError as exc:
            raise TraceFormatError(f"the trace's architecture is invalid: {exc}") from None

    @property
    def infos(self) -> list[dict]:
        return [layer["plan"] for layer in self.header["layers"]]

    @property
    def layer_names(self) -> list[str]:
        return [layer["name"] for layer in self.header["layers"]]

    @property
    def totals(self) -> dict:
        return self.header["totals"]

    def __len__(self) -> int:
        return int(self.columns["seq"].size)

    def layer_records(self, name_or_index) -> dict[str, np.ndarray]:
        """The columns of one layer's records."""
        idx = name_or_index if isinstance(name_or_index, int) else self.layer_names.index(name_or_index)
        sel = self.columns["layer"] == idx
        return {k: v[sel] for k, v in self.columns.items()}

    def iter_records(self, limit: int | None = None):
        """Records as dicts with op/unit/operand names (for reading, not for the hot path)."""
        units = unit_names(self.header["arch"]["n_cores"])
        n = len(self) if limit is None else min(limit, len(self))
        for i in range(n):
            rec = {k: int(v[i]) for k, v in self.columns.items()}
            rec["op"], rec["unit"], rec["operand"] = OPS[rec["op"]], units[rec["unit"]], OPERANDS[rec["operand"]]
            n, m = rec.pop("nm_n"), rec.pop("nm_m")
            rec["nm"] = f"{n}:{m}" if n else None
            yield rec

    def __repr__(self) -> str:
        return (f"Trace(arch={self.header['design']!r}, layers={len(self.header['layers'])}, records={len(self)}, "
                f"cycles={self.totals.get('cycles')})")

    # ------------------------------------------------------------------ replay
    def simulate(self, arch: Arch | str | None = None, *, strict: bool = False) -> SimulationResult:
        """Replay on ``arch`` (default: the trace's own). An architecture whose schedule differs
        (other cores, patterns, RF, SMEM size ...) re-lowers the embedded layers first; one that
        only changes bandwidths or energies replays these very records."""
        own = self.arch
        target = own if arch is None else get_arch(arch)
        headers = [layer["spec"] for layer in self.header["layers"]]
        if target.lowering_key() == own.lowering_key():
            notes = check_fallbacks(self.layer_names, self.infos, target, strict) + arch_notes(target)
            rp = replay(self.columns, self.infos, target, timings=False)
            return result_from(headers, self.infos, rp, target, notes)
        if not self.specs:
            raise TraceFormatError("this trace carries no layer table to re-lower for another architecture")
        _, infos, rp, notes = run_specs(self.specs, target, strict=strict, timings=False)
        return result_from(headers, infos, rp, target, notes)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> int:
        """Write the trace (atomically); returns the file size in bytes."""
        blobs: list[bytes] = []
        entries: list[dict] = []
        offset = 0

        def put(name: str, arr: np.ndarray, group: str) -> None:
            nonlocal offset
            enc = "delta" if name in _DELTA and group == "columns" else "plain"
            data = np.diff(arr, prepend=0) if enc == "delta" and arr.size else arr
            small = _smallest(data)
            raw = np.ascontiguousarray(small).astype(small.dtype.newbyteorder("<"), copy=False).tobytes()
            blob = zlib.compress(raw, 6)
            entries.append({"group": group, "name": name, "dtype": small.dtype.str.lstrip("<>|="), "encoding": enc,
                            "count": int(arr.size), "shape": list(arr.shape), "offset": offset, "nbytes": len(blob),
                            "crc32": zlib.crc32(blob)})
            blobs.append(blob)
            offset += len(blob)

        for name in COLUMNS:
            put(name, self.columns[name], "columns")
        for i, spec in enumerate(self.specs):
            for name in _LAYER_ARRAYS:
                arr = getattr(spec, name)
                if arr is not None:
                    put(f"{i}:{name}", np.asarray(arr), "layers")
        header = dict(self.header)
        header["blobs"] = entries
        head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
        data = b"".join([MAGIC, struct.pack("<QI", len(head), zlib.crc32(head)), head, *blobs])
        atomic_write_bytes(path, data)
        return len(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":  # noqa: C901  (one check per field of the format)
        """Read a trace written by :meth:`save`; raises TraceFormatError on anything else."""
        p = Path(path)
        where = f"trace file {str(p)!r}"
        if not p.is_file():
            raise TraceFormatError(f"{where} does not exist")
        data = p.read_bytes()
        if data[:8] != MAGIC:
            raise TraceFormatError(f"{where} is not a crisp instruction trace (bad magic); create one with "
                                   "crisp.compile(..., target='crisp-stc') and Trace.save")
        if len(data) < _PREFIX:
            raise TraceFormatError(f"{where} is truncated (no header)")
        hlen, hcrc = struct.unpack("<QI", data[8:_PREFIX])
        if _PREFIX + hlen > len(data):
            raise TraceFormatError(f"{where} is truncated: header says {hlen} bytes, file has {len(data) - _PREFIX}")
        head = data[_PREFIX:_PREFIX + hlen]
        if zlib.crc32(head) != hcrc:
            raise TraceFormatError(f"{where} has a corrupt header (checksum does not match)")
        try:
            header = json.loads(head.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TraceFormatError(f"{where} has a corrupt header: {exc}") from None
        if not isinstance(header, dict) or header.get("schema") != SCHEMA:
            raise TraceFormatError(f"{where} has schema {header.get('schema') if isinstance(header, dict) else None!r}, "
                                   f"expected {SCHEMA!r}")
        version = str(header.get("version", ""))
        if version.split(".")[0] != VERSION.split(".")[0]:
            raise TraceFormatError(
                f"{where} is trace version {version!r}; this crisp reads version {VERSION.split('.')[0]}.x. "
                "Re-create the trace with this crisp version (crisp.compile(..., target='crisp-stc'))"
            )
        body = data[_PREFIX + hlen:]
        columns: dict[str, np.ndarray] = {}
        arrays: dict[str, np.ndarray] = {}
        try:
            entries = header.pop("blobs")
            for e in entries:
                blob = body[e["offset"]:e["offset"] + e["nbytes"]]
                if len(blob) != e["nbytes"]:
                    raise TraceFormatError(f"{where} is truncated in blob {e['name']!r}")
                if zlib.crc32(blob) != e["crc32"]:
                    raise TraceFormatError(f"{where} is corrupt: checksum of blob {e['name']!r} does not match")
                arr = _decompressed(blob, e, where)
                if arr.size != e["count"]:
                    raise TraceFormatError(f"{where} is corrupt: blob {e['name']!r} holds {arr.size} values, "
                                           f"expected {e['count']}")
                arr = arr.astype(np.int64)
                if e["encoding"] == "delta":
                    arr = np.cumsum(arr)
                arr = arr.reshape(e["shape"])
                if e["group"] == "columns":
                    columns[e["name"]] = arr.astype(COLUMNS[e["name"]])
                else:
                    arrays[e["name"]] = arr
        except TraceFormatError:
            raise
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise TraceFormatError(f"{where} is corrupt: {exc}") from None
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise TraceFormatError(f"{where} lacks column(s) {', '.join(missing)}")
        n = columns["seq"].size
        if any(v.size != n for v in columns.values()):
            raise TraceFormatError(f"{where} is corrupt: columns differ in length")
        specs = []
        try:
            for i, layer in enumerate(header["layers"]):
                _check_spec(layer["spec"], f"{where} layer {i}")
                specs.append(LayerSpec.from_header(layer["spec"], **{
                    name: arrays.get(f"{i}:{name}") for name in _LAYER_ARRAYS}))
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceFormatError(f"{where} has a corrupt layer table: {exc}") from None
        return cls(header=header, columns=columns, specs=specs)

    def verify(self) -> dict:
        """Replay the records on the trace's own architecture and check the totals against the
        header (trace totals = simulator totals); returns the recomputed totals."""
        res = self.simulate()
        got = _totals(res, self)
        for key in ("cycles", "macs_act", "dram_read_bytes", "dram_read_meta_bytes", "smem_read_bytes",
                    "smem_read_meta_bytes", "dram_write_bytes"):
            if got[key] != self.totals[key]:
                raise TraceFormatError(f"trace totals disagree with its records: {key} {self.totals[key]} in the "
                                       f"header, {got[key]} replayed")
        return got


def _smallest(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.size == 0:
        return arr.astype(np.int8)
    lo, hi = int(arr.min()), int(arr.max())
    for dt in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dt)
    return arr.astype(np.int64)


def _totals(res: SimulationResult, trace: Trace | None = None) -> dict:
    t = res.totals()
    out = {k: t[k] for k in ("cycles", "macs_alg", "macs_act", "dram_read_bytes", "dram_read_meta_bytes",
                             "dram_write_bytes", "smem_read_bytes", "smem_read_meta_bytes", "smem_write_bytes")}
    out["energy_uj"] = t["energy_uj"]
    out["energy_uj_by_component"] = t["energy_uj_by_component"]
    if trace is not None and len(trace):
        out["records"] = len(trace)
        out["max_end"] = int(trace.columns["end"].max())
    return out


def _pattern_header(specs: list[LayerSpec], pattern) -> dict | None:
    pats = sorted({s.pattern for s in specs if s.pattern})
    if pattern is not None:
        want = (pattern.n, pattern.m, pattern.block) if isinstance(pattern, Pattern) else (*parse_nm(str(pattern)), None)
        for s in specs:
            if s.pattern and (s.pattern[:2] != want[:2] or (want[2] is not None and s.pattern[2] != want[2])):
                label = f"{want[0]}:{want[1]}" + (f" in {want[2]}-blocks" if want[2] else "")
                raise PatternError(f"layer {s.name!r} is pruned to {s.pattern[0]}:{s.pattern[1]} in "
                                   f"{s.pattern[2]}-blocks, not the trace's pattern {label}; pass pattern=None to "
                                   "take it from the layers")
    if not pats:
        return None
    if len(pats) > 1:
        return {"mixed": [list(x) for x in pats]}
    n, m, b = pats[0]
    index_bytes = max((s.index_bytes for s in specs if s.pattern), default=2)
    return {"n": n, "m": m, "blk": b, "format": "bell+nm", "offset_bits": offset_bits(m), "index_bits": 8 * index_bytes}


def trace_from_layers(layers, arch: Arch | str = "crisp-stc", pattern=None, *, strict: bool = False) -> Trace:
    """Lower ``layers`` (LayerInfo objects, e.g. ``compiled.layers``, or LayerSpecs) to an
    instruction trace for ``arch`` and time it. ``pattern`` (optional) labels the header and
    must agree with the layers' compact tensors. ``strict=True`` refuses layers whose pattern
    the architecture cannot run natively instead of simulating the fallback."""
    target = get_arch(arch)
    specs = specs_from_layers(layers)
    cols, infos, rp, notes = run_specs(specs, target, strict=strict, timings=True)
    headers = [s.header() for s in specs]
    res = result_from(headers, infos, rp, target, notes)
    header = {
        "schema": SCHEMA,
        "version": VERSION,
        "crisp_version": _crisp_version(),
        "design": target.name,
        "arch": target.to_dict(),
        "pattern": _pattern_header(specs, pattern),
        "units": unit_names(target.n_cores),
        "ops": list(OPS),
        "operands": list(OPERANDS),
        "layers": [{"name": s.name, "spec": h, "plan": info} for s, h, info in zip(specs, headers, infos)],
        "notes": notes,
    }
    trace = Trace(header=header, columns=cols, specs=specs)
    header["totals"] = _totals(res, trace)
    return trace


# Sane ranges of a layer header's sizes: far above any real layer, small enough that nothing a crafted
# header says can make the simulator allocate or loop without bound.
_SPEC_LIMITS = {"M": 2**24, "K": 2**24, "N": 2**28, "groups": 2**24, "in_channels": 2**24, "in_positions": 2**34,
                "kernel_positions": 2**16, "stored_values": 2**40, "metadata_bytes": 2**42, "index_bytes": 2**42,
                "paper_metadata_bits": 2**45}
_MAX_INFLATE = 1100  # deflate never expands a stream more than ~1032 times


def _check_spec(h, where: str) -> None:
    """Every size in a layer header an integer within :data:`_SPEC_LIMITS` (named in the message)."""
    if not isinstance(h, dict):
        raise TraceFormatError(f"{where}: the layer spec must be a table, got {type(h).__name__}")
    if not isinstance(h.get("name"), str):
        raise TraceFormatError(f"{where}: the layer name must be a string, got {h.get('name')!r}")
    for key, top in _SPEC_LIMITS.items():
        if key in ("M", "K", "N"):
            check_int(f"{where}: {key}", h.get(key), minimum=0, maximum=top, error=TraceFormatError)
        elif h.get(key) is not None:
            check_number(f"{where}: {key}", h.get(key), minimum=0, maximum=top, error=TraceFormatError)


def _decompressed(blob: bytes, e: dict, where: str) -> np.ndarray:
    """One blob's values, refusing a count the compressed size cannot hold before inflating it."""
    dtype = np.dtype(e["dtype"]).newbyteorder("<")
    count = check_int(f"{where} blob {e['name']!r} count", e["count"], minimum=0,
                      maximum=max(16, len(blob) * _MAX_INFLATE // max(1, dtype.itemsize)), error=TraceFormatError)
    inflate = zlib.decompressobj()
    raw = inflate.decompress(blob, count * dtype.itemsize + 1)
    return np.frombuffer(raw, dtype=dtype)
