"""Operand bytes, the DRAM residency plan and the DRAM load records that both dataflows' lowerings share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.records import OP, OPERAND, UNIT, RecordBuilder
from crisp.runtime.simulator.workload import LayerSpec


def prorate(total: int, weights: np.ndarray) -> np.ndarray:
    """Split integer ``total`` in proportion to ``weights`` so that the parts sum to it exactly."""
    w = np.asarray(weights, dtype=np.float64)
    s = w.sum()
    if s <= 0 or total == 0:
        return np.zeros(w.shape, dtype=np.int64)
    cum = np.rint(np.cumsum(w) / s * total).astype(np.int64)
    return np.diff(np.concatenate([[0], cum]))


@dataclass(frozen=True)
class DramTraffic:
    """One copy of each operand's bytes in DRAM, how often each is read, and which stays in SMEM."""

    weight_bytes: int
    activation_bytes: int
    weight_repeats: int
    activation_repeats: int
    resident: str  # "both", "weights" or "activations"

    def info(self) -> dict:
        return {
            "dram_weight_bytes": self.weight_bytes,
            "dram_activation_bytes": self.activation_bytes,
            "weight_repeats": self.weight_repeats,
            "activation_repeats": self.activation_repeats,
            "resident": self.resident,
        }


def dram_plan(a_bytes: int, b_bytes: int, arch: Arch, a_meta: int = 0) -> DramTraffic:
    """Each operand once if both fit the resident share of SMEM; otherwise the cheaper of (weights
    resident in chunks, activations re-read per chunk) and the converse. ``a_bytes`` includes the
    weights' ``a_meta`` metadata bytes; on equal traffic, fewer data bytes win (metadata costs DRAM
    bandwidth but no DRAM energy)."""
    cap = arch.smem_bytes * arch.smem_resident_fraction
    chunks_a = max(1, math.ceil(a_bytes / cap))
    chunks_b = max(1, math.ceil(b_bytes / cap))
    if chunks_a == 1 and chunks_b == 1:
        return DramTraffic(a_bytes, b_bytes, 1, 1, "both")
    opt_a = (a_bytes + b_bytes * chunks_a, (a_bytes - a_meta) + b_bytes * chunks_a)
    opt_b = (b_bytes + a_bytes * chunks_b, b_bytes + (a_bytes - a_meta) * chunks_b)
    if opt_a <= opt_b:
        return DramTraffic(a_bytes, b_bytes, 1, chunks_a, "weights")
    return DramTraffic(a_bytes, b_bytes, chunks_b, 1, "activations")


def activation_dram_elements(spec: LayerSpec, col_mask: np.ndarray | None) -> int:
    """Elements of activations a layer needs from DRAM (one copy). A conv reads its input feature
    map (im2col happens on chip), only the channels that some kept block needs. ``col_mask``: bool
    [K] of the reduction columns that some kept block needs (None: all)."""
    needed_cols = spec.K if col_mask is None else int(col_mask.sum())
    gemm_elems = needed_cols * spec.N * spec.groups
    if not spec.in_channels or spec.in_positions <= 0:
        return gemm_elems
    cin_g = spec.in_channels // spec.groups
    if col_mask is None:
        channels = spec.in_channels
    elif spec.kernel_positions * cin_g == spec.K:
        channels = int(col_mask.reshape(spec.kernel_positions, cin_g).any(0).sum()) * spec.groups
    else:
        channels = spec.in_channels
    return min(channels * spec.in_positions, gemm_elems)


@dataclass(frozen=True)
class DramLoads:
    """The LD_DRAM fields of one operand: ``count`` loads (one per weight pass or activation
    tile); each field is an array with one entry per load, or a scalar for all."""

    operand: str
    count: int
    fields: dict

    def add(self, rec: RecordBuilder, keys: np.ndarray, idx: np.ndarray | None = None) -> None:
        """Add the loads (those at ``idx``, repeats allowed; all by default) under ``keys``."""
        fields = self.fields if idx is None else {
            name: v[idx] if isinstance(v, np.ndarray) else v for name, v in self.fields.items()}
        rec.add(keys, op=OP["LD_DRAM"], unit=UNIT["dma"], operand=OPERAND[self.operand], **fields)


def add_refetches_and_sync(rec: RecordBuilder, end_key: int, a: DramLoads, b: DramLoads, traffic: DramTraffic) -> None:
    """After the last tile (``end_key``): the capacity re-reads of the operand that does not stay
    resident, then the layer's closing SYNC."""
    rep_a, rep_b = traffic.weight_repeats, traffic.activation_repeats
    if rep_a > 1:
        idx = np.tile(np.arange(a.count), rep_a - 1)
        a.add(rec, end_key + np.arange(idx.size), idx)
    if rep_b > 1:
        idx = np.tile(np.arange(b.count), rep_b - 1)
        b.add(rec, end_key + a.count * rep_a + np.arange(idx.size), idx)
    rec.add([end_key + a.count * rep_a + b.count * rep_b + 1], op=OP["SYNC"], unit=UNIT["ctrl"])
