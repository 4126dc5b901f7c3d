"""Read and write architecture descriptions (TOML or JSON), validated with clear errors.

A file either lists every required field, or names a preset to start from with
``base = "crisp-stc"`` and overrides some fields. ``energy`` is a table name
(``"sl45-stc"``, ``"sl45-tc"``, ``"sl45-dstc"``) or a table of per-action energies in pJ::

    base = "crisp-stc"
    name = "crisp-stc-half-bw"
    smem_read_bw = 21
    [energy]
    dram_per_byte = 40.0
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from crisp.fileio import atomic_write_text
from crisp.validate import check_int, check_number

from crisp.runtime.simulator.arch import FLOAT_LIMITS, INT_LIMITS, Arch
from crisp.runtime.simulator.energy import ENERGY_TABLES, MAX_PJ, MAX_ROW_BYTES, EnergyTable
from crisp.runtime.simulator.errors import ArchError
from crisp.runtime.simulator.presets import PRESETS

_ARCH_FIELDS = {f.name: f for f in fields(Arch)}
_ENERGY_FIELDS = {f.name: f for f in fields(EnergyTable)}
REQUIRED = tuple(n for n, f in _ARCH_FIELDS.items() if f.default is MISSING and f.default_factory is MISSING)
_INT_FIELDS = {"n_cores", "macs_per_core", "rf_bytes", "smem_bytes", "core_rows", "gather_lanes", "word_bytes"}
_FLOAT_FIELDS = {"smem_read_bw", "smem_write_bw", "dram_read_bw", "dram_write_bw", "activation_density",
                 "smem_resident_fraction", "clock_ghz"}


def _unknown(key: str, known, where: str) -> ArchError:
    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return ArchError(f"{where}: unknown field {key!r}{hint}; known fields: {', '.join(sorted(known))}")


def _energy_from(value: Any, base: EnergyTable, where: str) -> EnergyTable:
    if isinstance(value, str):
        if value not in ENERGY_TABLES:
            raise ArchError(f"{where}: unknown energy table {value!r}; tables: {', '.join(ENERGY_TABLES)}")
        return ENERGY_TABLES[value]
    if not isinstance(value, dict):
        raise ArchError(f"{where}: energy must be a table name or a table of pJ values, got {value!r}")
    merged = base.to_dict()
    for key, v in value.items():
        if key not in _ENERGY_FIELDS:
            raise _unknown(key, _ENERGY_FIELDS, f"{where} [energy]")
        if key == "smem_row_bytes":
            v = check_int(f"{where}: energy.smem_row_bytes", v, minimum=1, maximum=MAX_ROW_BYTES, error=ArchError)
        elif key != "name":
            check_number(f"{where}: energy.{key}", v, minimum=0.0, maximum=MAX_PJ, error=ArchError)
        merged[key] = v
    if "name" not in value:
        merged["name"] = f"{base.name}+custom"
    table = EnergyTable(**merged)
    table.validate(where)
    return table


def arch_from_dict(data: dict, source: str = "architecture") -> Arch:
    """Build and validate an :class:`Arch` from a dict (the parsed TOML/JSON)."""
    if not isinstance(data, dict):
        raise ArchError(f"{source}: expected a table of fields, got {type(data).__name__}")
    data = dict(data)
    base_name = data.pop("base", None)
    if base_name is not None:
        if not isinstance(base_name, str) or base_name not in PRESETS:
            raise ArchError(f"{source}: base {base_name!r} is not a preset; presets: {', '.join(PRESETS)}")
        values = {f: getattr(PRESETS[base_name], f) for f in _ARCH_FIELDS}
    else:
        values = {}
        missing = [f for f in REQUIRED if f not in data]
        if missing:
            raise ArchError(
                f"{source}: missing required field(s) {', '.join(missing)}; list them, or start from a preset "
                f"with base = \"crisp-stc\" (presets: {', '.join(PRESETS)})"
            )
    for key, value in data.items():
        if key not in _ARCH_FIELDS:
            raise _unknown(key, _ARCH_FIELDS, source)
        if key == "energy":
            continue
        if key in _INT_FIELDS:
            if not isinstance(value, bool) and isinstance(value, int) and value <= 0:
                raise ArchError(f"{source}: {key} must be positive, got {value!r}")
            value = check_int(f"{source}: {key}", value, minimum=1, maximum=INT_LIMITS[key], error=ArchError)
        elif key in _FLOAT_FIELDS:
            if not isinstance(value, bool) and isinstance(value, (int, float)) and value <= 0:
                raise ArchError(f"{source}: {key} must be positive, got {value!r}")
            low, top = FLOAT_LIMITS[key]
            value = check_number(f"{source}: {key}", value, minimum=low, maximum=top, positive=True, error=ArchError)
        elif key in ("name", "description", "dataflow") and not isinstance(value, str):
            raise ArchError(f"{source}: {key} must be a string, got {value!r}")
        elif key == "patterns":
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ArchError(f"{source}: patterns must be a list like [\"2:4\"], got {value!r}")
            value = tuple(value)
        elif key == "block_skipping" and not isinstance(value, bool):
            raise ArchError(f"{source}: block_skipping must be true or false, got {value!r}")
        values[key] = value
    base_energy = values.get("energy") or ENERGY_TABLES["sl45-stc"]
    values["energy"] = _energy_from(data["energy"], base_energy, source) if "energy" in data else base_energy
    if base_name is not None and "name" not in data:
        values["name"] = f"{base_name}-custom"
    try:
        return Arch(**values)
    except ArchError as exc:
        raise ArchError(f"{source}: {exc}") from None
    except TypeError as exc:  # a field of the wrong kind deep inside the dataclass
        raise ArchError(f"{source}: {exc}") from None


def load_arch(path: str | os.PathLike) -> Arch:
    """Load an architecture from a ``.toml`` or ``.json`` file."""
    p = Path(path)
    if not p.is_file():
        raise ArchError(f"architecture file {str(p)!r} does not exist")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArchError(f"architecture file {str(p)!r} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise ArchError(f"architecture file {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ArchError(f"architecture file {str(p)!r} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ArchError(f"architecture file {str(p)!r} is not valid {p.suffix[1:].upper()}: {exc}") from None
    return arch_from_dict(data, source=f"architecture file {str(p)!r}")


def save_arch(arch: Arch, path: str | os.PathLike) -> None:
    """Write ``arch`` as JSON (atomically), loadable with :func:`load_arch`."""
    atomic_write_text(path, json.dumps(arch.to_dict(), indent=2) + "\n")


def get_arch(arch: "Arch | str") -> Arch:
    """An :class:`Arch` from a preset name, a ``.toml``/``.json`` file path, or an Arch."""
    if isinstance(arch, Arch):
        return arch
    if not isinstance(arch, str):
        raise ArchError(f"arch must be a preset name, a .toml/.json file or an Arch, got {type(arch).__name__}")
    key = arch.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    if key.endswith((".toml", ".json")):
        return load_arch(arch)
    raise ArchError(
        f"unknown architecture {arch!r}; presets: {', '.join(PRESETS)} "
        f"(or pass a .toml/.json file or a crisp.runtime.simulator.Arch)"
    )
