"""Replay instruction records on an architecture: cycles, bounds, traffic, energy, timings.

Cost model (Sparseloop's, reference/sparseloop-fig15-stc.txt sec. 6 R1-R4), per layer:

- each resource's busy time: a core = the sum of its MMA cycles; SMEM reads = bytes + metadata
  bytes of LD_SMEM/LD_META over the SMEM read bandwidth; SMEM writes = what LD_DRAM fills over
  the SMEM write bandwidth; DRAM reads (LD_DRAM, metadata included) and DRAM writes (ST) over
  their bandwidths;
- cycles = the busiest resource, rounded up: resources overlap (double buffering), layers run
  one after another. The busiest resource is the layer's bound (compute, SMEM or DRAM);
- timings: a fluid schedule. Each unit runs its instructions in order, stretched evenly over
  the layer, so the bottleneck unit is never idle and every unit ends with the layer.

Everything is numpy over all records at once (bincount / cumsum per segment); no Python loop
runs per instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.energy import COMPONENTS, AccessCounts, energy_pj
from crisp.runtime.simulator.records import FIRST_CORE_UNIT, OP, OPERAND, unit_names

RESOURCES = ("compute", "smem_read", "smem_write", "dram_read", "dram_write")
BOUND_OF = {"compute": "compute", "smem_read": "smem", "smem_write": "smem", "dram_read": "dram", "dram_write": "dram"}


@dataclass
class Replay:
    """Per-layer arrays (length = number of layers) and per-record timings."""

    cycles: np.ndarray
    resource_cycles: dict[str, np.ndarray]
    bound: list[str]
    counts: dict[str, np.ndarray]
    energy_pj: dict[str, np.ndarray]
    start: np.ndarray
    end: np.ndarray


def _per_layer(layer: np.ndarray, mask: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(layer[mask], weights=values[mask].astype(np.float64), minlength=n)


def replay(cols: dict[str, np.ndarray], infos: list[dict], arch: Arch, *, timings: bool = True) -> Replay:
    nl = len(infos)
    layer = cols["layer"].astype(np.int64)
    op = cols["op"]
    unit = cols["unit"].astype(np.int64)
    nbytes = cols["bytes"].astype(np.float64)
    meta = cols["meta_bytes"].astype(np.float64)
    is_dram = op == OP["LD_DRAM"]
    is_smem = (op == OP["LD_SMEM"]) | (op == OP["LD_META"])
    is_st = op == OP["ST"]
    is_mma = (op == OP["MMA"]) | (op == OP["MMA_SP"])
    wb = float(arch.word_bytes)

    c = {
        "dram_read_bytes": _per_layer(layer, is_dram, nbytes, nl),
        "dram_read_meta_bytes": _per_layer(layer, is_dram, meta, nl),
        "dram_write_bytes": _per_layer(layer, is_st, nbytes, nl),
        "smem_read_bytes": _per_layer(layer, is_smem, nbytes, nl),
        "smem_read_meta_bytes": _per_layer(layer, is_smem, meta, nl),
        "smem_read_weight_bytes": _per_layer(layer, is_smem & (cols["operand"] == OPERAND["A"]), nbytes, nl),
        "macs_act": _per_layer(layer, is_mma, cols["macs_act"], nl),
        "macs_alg_records": _per_layer(layer, is_mma, cols["macs_alg"], nl),
        "rf_updates": _per_layer(layer, is_mma, cols["mt"] * cols["cycles"], nl),
    }
    c["smem_write_bytes"] = c["dram_read_bytes"]
    c["smem_write_meta_bytes"] = c["dram_read_meta_bytes"]
    core = np.clip(unit - FIRST_CORE_UNIT, 0, arch.n_cores - 1)
    busy = np.bincount(layer[is_mma] * arch.n_cores + core[is_mma], weights=cols["cycles"][is_mma].astype(np.float64),
                       minlength=nl * arch.n_cores).reshape(nl, arch.n_cores)
    res = {
        "compute": busy.max(axis=1) if nl else np.zeros(0),
        "smem_read": (c["smem_read_bytes"] + c["smem_read_meta_bytes"]) / arch.smem_read_bw,
        "smem_write": (c["smem_write_bytes"] + c["smem_write_meta_bytes"]) / arch.smem_write_bw,
        "dram_read": (c["dram_read_bytes"] + c["dram_read_meta_bytes"]) / arch.dram_read_bw,
        "dram_write": c["dram_write_bytes"] / arch.dram_write_bw,
    }
    stack = np.vstack([res[r] for r in RESOURCES]) if nl else np.zeros((len(RESOURCES), 0))
    cycles = np.maximum(np.ceil(stack.max(axis=0) - 1e-9), 1).astype(np.int64) if nl else np.zeros(0, np.int64)
    bound = [BOUND_OF[RESOURCES[i]] for i in stack.argmax(axis=0)] if nl else []

    # energy counts
    simd = np.array([i["dataflow"] == "simd" for i in infos], dtype=bool)
    lrf_bits = np.array([i.get("lrf_meta_bits", 0) for i in infos], dtype=np.float64)
    side = np.array([i.get("array_side", 1) for i in infos], dtype=np.float64)
    a_words = c["smem_read_weight_bytes"] / wb
    smem_words = c["smem_read_bytes"] / wb
    lrf_words = np.where(simd, a_words + c["macs_act"], 2 * c["macs_act"] / side + smem_words)
    lrf_meta_bits = np.where(simd, (a_words + c["macs_act"]) * lrf_bits, c["smem_read_meta_bytes"] * 8)
    rf_updates = np.where(simd, c["rf_updates"], c["macs_act"])
    counts = AccessCounts(
        macs=c["macs_act"],
        lrf_words=lrf_words,
        lrf_meta_bits=lrf_meta_bits,
        rf_updates=rf_updates,
        smem_read_bytes=c["smem_read_bytes"],
        smem_write_bytes=c["smem_write_bytes"],
        smem_meta_read_bits=c["smem_read_meta_bytes"] * 8,
        smem_meta_write_bits=c["smem_write_meta_bytes"] * 8,
        dram_data_bytes=c["dram_read_bytes"] + c["dram_write_bytes"],
    )
    e = energy_pj(counts, arch.energy)
    e = {k: np.asarray(e[k], dtype=np.float64) * np.ones(nl) for k in COMPONENTS}
    c["lrf_words"], c["lrf_meta_bits"], c["rf_updates"] = lrf_words, lrf_meta_bits, rf_updates

    start = end = np.zeros(0, dtype=np.int64)
    if timings:
        start, end = _fluid_schedule(cols, layer, unit, cycles, arch, is_dram, is_st, is_smem, is_mma)
    return Replay(cycles, res, bound, c, e, start, end)


def _fluid_schedule(cols, layer, unit, cycles, arch, is_dram, is_st, is_smem, is_mma):
    n = layer.size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    occ = np.zeros(n, dtype=np.float64)
    nbytes = cols["bytes"].astype(np.float64)
    meta = cols["meta_bytes"].astype(np.float64)
    occ[is_dram] = (nbytes[is_dram] + meta[is_dram]) / arch.dram_read_bw
    occ[is_st] = nbytes[is_st] / arch.dram_write_bw
    occ[is_smem] = (nbytes[is_smem] + meta[is_smem]) / arch.smem_read_bw
    occ[is_mma] = cols["cycles"][is_mma]
    nu = len(unit_names(arch.n_cores))
    seg = layer * nu + unit
    order = np.argsort(seg, kind="stable")
    seg_sorted = seg[order]
    occ_sorted = occ[order]
    totals = np.bincount(seg, weights=occ, minlength=(int(layer.max()) + 1) * nu)
    cum = np.cumsum(occ_sorted)
    first = np.r_[True, seg_sorted[1:] != seg_sorted[:-1]]
    seg_base = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    before = cum - occ_sorted - (cum[seg_base] - occ_sorted[seg_base])
    layer_start = np.concatenate([[0], np.cumsum(cycles)[:-1]])
    lyr = seg_sorted // nu
    tot = totals[seg_sorted]
    scale = np.where(tot > 0, cycles[lyr] / np.where(tot > 0, tot, 1), 0.0)
    s = layer_start[lyr] + before * scale
    e = s + occ_sorted * scale
    sync = cols["op"][order] == OP["SYNC"]
    s = np.where(sync, layer_start[lyr] + cycles[lyr], s)
    e = np.where(sync, layer_start[lyr] + cycles[lyr], e)
    start = np.empty(n, dtype=np.int64)
    end = np.empty(n, dtype=np.int64)
    start[order] = np.rint(s).astype(np.int64)
    end[order] = np.maximum(np.rint(e).astype(np.int64), start[order])
    return start, end
