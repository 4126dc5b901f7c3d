"""Lowering of one layer on the outer-product dataflow (DSTC): an output tile per core, MMA cycles
expected over random sparsity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.lowering_traffic import (DramLoads, DramTraffic, activation_dram_elements,
                                                      add_refetches_and_sync, dram_plan, prorate)
from crisp.runtime.simulator.plan import ExecPlan, plan_layer
from crisp.runtime.simulator.records import FIRST_CORE_UNIT, OP, OPERAND, UNIT, RecordBuilder
from crisp.runtime.simulator.workload import LayerSpec

# slots of a (row pass, column pass) record group: the MMAs follow LD_SMEM B, the ST comes last
_LD_DRAM_A, _LD_DRAM_B, _LD_SMEM_A, _LD_SMEM_B, _FIRST_MMA = range(5)


def _ceil_div(a, b):
    return -(-np.asarray(a) // b)


def expected_ceil_binomial(n: np.ndarray, d: np.ndarray, side: int) -> np.ndarray:
    """E[ceil(X / side)] for X ~ Binomial(n, d), elementwise (n <= a few hundred)."""
    n = np.asarray(n, dtype=np.int64)
    d = np.clip(np.asarray(d, dtype=np.float64), 0.0, 1.0)
    out = np.zeros(np.broadcast(n, d).shape, dtype=np.float64)
    n_b, d_b = np.broadcast_arrays(n, d)
    for nv in np.unique(n_b):
        sel = n_b == nv
        x = np.arange(nv + 1)
        comb = np.array([math.comb(int(nv), int(i)) for i in x], dtype=np.float64)
        dd = d_b[sel][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            pmf = comb * np.where(x == 0, 1.0, dd ** x) * np.where(x == nv, 1.0, (1 - dd) ** (nv - x))
        out[sel] = pmf @ np.ceil(x / side)
    return out


@dataclass(frozen=True)
class OuterTiles:
    """Tile geometry of one layer: the cores form a ``cm x cn`` grid of ``Tm x Tn`` output tiles;
    a row pass covers ``cm x Tm`` rows of one group, a column pass ``cn x Tn`` positions."""

    side: int  # outer-product array side
    Tm: int
    Tn: int
    C: int  # cores
    cm: int  # cores along M
    cn: int  # cores along N
    wb: int  # bytes per word
    dB: float  # activation density
    K: int
    cum_nnz: np.ndarray  # [M + 1] kept weights of the rows before each row
    pm: np.ndarray  # [PPM] row pass index
    row0: np.ndarray  # [PPM] first (global) row of each row pass
    rows_m: np.ndarray  # [PPM] rows of each row pass
    nnz_m: np.ndarray  # [PPM] kept weights of each row pass
    pn: np.ndarray  # [PN] column pass index
    col0: np.ndarray  # [PN] first position of each column pass
    cols_n: np.ndarray  # [PN] positions of each column pass


def _tiles(spec: LayerSpec, arch: Arch) -> OuterTiles:
    C, Tm, Tn = arch.n_cores, arch.tile_m, arch.tile_n
    cm = max(d for d in range(1, int(math.isqrt(C)) + 1) if C % d == 0)
    cn = C // cm
    K, N = spec.K, spec.N
    Mg = spec.M // spec.groups
    row_nnz = spec.row_nnz if spec.row_nnz is not None else np.full(spec.M, K, dtype=np.int64)
    cum_nnz = np.concatenate([[0], np.cumsum(row_nnz)])
    PM = -(-Mg // (cm * Tm))
    pm = np.arange(spec.groups * PM)
    grp, pl = pm // PM, pm % PM
    row0 = grp * Mg + pl * cm * Tm
    rows_m = np.clip(Mg - pl * cm * Tm, 0, cm * Tm)
    pn = np.arange(-(-N // (cn * Tn)))
    col0 = pn * cn * Tn
    return OuterTiles(side=arch.array_side, Tm=Tm, Tn=Tn, C=C, cm=cm, cn=cn, wb=arch.word_bytes,
                      dB=arch.activation_density, K=K, cum_nnz=cum_nnz, pm=pm, row0=row0, rows_m=rows_m,
                      nnz_m=cum_nnz[row0 + rows_m] - cum_nnz[row0], pn=pn, col0=col0,
                      cols_n=np.clip(N - col0, 0, cn * Tn))


def _dram_loads(spec: LayerSpec, arch: Arch, ot: OuterTiles) -> tuple[DramTraffic, DramLoads, DramLoads]:
    """DRAM traffic and per-pass loads: weights and activations travel compressed, with a
    1-bit-per-position bitmask."""
    a_meta_total = math.ceil(spec.M * ot.K / 8)
    fmap = activation_dram_elements(spec, None)
    b_vals_total = int(round(ot.dB * fmap))
    b_meta_total = math.ceil(fmap / 8)
    a_bytes = int(ot.cum_nnz[-1]) * ot.wb + a_meta_total  # all kept weights, and their bitmask
    traffic = dram_plan(a_bytes, b_vals_total * ot.wb + b_meta_total, arch, a_meta_total)
    a = DramLoads("A", ot.pm.size, {"m0": ot.row0, "mt": ot.rows_m, "kt": ot.K, "bytes": ot.nnz_m * ot.wb,
                                    "meta_bytes": prorate(a_meta_total, ot.rows_m)})
    b = DramLoads("B", ot.pn.size, {"n0": ot.col0, "nt": ot.cols_n, "kt": ot.K,
                                    "bytes": prorate(b_vals_total * ot.wb, ot.cols_n),
                                    "meta_bytes": prorate(b_meta_total, ot.cols_n)})
    return traffic, a, b


def _tile_records(rec: RecordBuilder, ot: OuterTiles, per_tile: int) -> None:
    """Per (row pass, column pass): LD_SMEM of the compressed weights and activations, ST of the outputs."""
    t_m = np.repeat(ot.pm, ot.pn.size)
    t_n = np.tile(ot.pn, ot.pm.size)
    tkey = np.arange(t_m.size) * per_tile
    a_meta_pass = _ceil_div(ot.rows_m * ot.K, 8)
    b_vals_pass = np.rint(ot.dB * ot.K * ot.cols_n).astype(np.int64)
    b_meta_pass = _ceil_div(ot.K * ot.cols_n, 8)
    rec.add(tkey + _LD_SMEM_A, op=OP["LD_SMEM"], unit=UNIT["smem"], operand=OPERAND["A"], m0=ot.row0[t_m],
            mt=ot.rows_m[t_m], n0=ot.col0[t_n], kt=ot.K, bytes=ot.nnz_m[t_m] * ot.wb, meta_bytes=a_meta_pass[t_m])
    rec.add(tkey + _LD_SMEM_B, op=OP["LD_SMEM"], unit=UNIT["smem"], operand=OPERAND["B"], m0=ot.row0[t_m],
            n0=ot.col0[t_n], nt=ot.cols_n[t_n], kt=ot.K, bytes=b_vals_pass[t_n] * ot.wb,
            meta_bytes=b_meta_pass[t_n])
    rec.add(tkey + per_tile - 1, op=OP["ST"], unit=UNIT["wb"], operand=OPERAND["Z"], m0=ot.row0[t_m],
            mt=ot.rows_m[t_m], n0=ot.col0[t_n], nt=ot.cols_n[t_n], bytes=ot.rows_m[t_m] * ot.cols_n[t_n] * ot.wb)


def _mmas(rec: RecordBuilder, ot: OuterTiles, per_tile: int) -> None:
    """One MMA_SP per core per tile: per K step, ``ceil(nnz_a/side) x ceil(nnz_b/side)`` cycles, expected."""
    c = np.arange(ot.C)
    ci, cj = c // ot.cn, c % ot.cn
    PN = ot.pn.size
    tt = np.repeat(np.arange(ot.pm.size * PN), ot.C)
    cc = np.tile(c, ot.pm.size * PN)
    t_m, t_n = tt // PN, tt % PN
    mrows = np.clip(ot.rows_m[t_m] - ci[cc] * ot.Tm, 0, ot.Tm)
    ncols = np.clip(ot.cols_n[t_n] - cj[cc] * ot.Tn, 0, ot.Tn)
    live = (mrows > 0) & (ncols > 0)
    tt, cc, mrows, ncols, t_m, t_n = tt[live], cc[live], mrows[live], ncols[live], t_m[live], t_n[live]
    r0 = ot.row0[t_m] + ci[cc] * ot.Tm
    nnz = ot.cum_nnz[r0 + mrows] - ot.cum_nnz[r0]
    K = ot.K
    e_a = expected_ceil_binomial(mrows, nnz / (mrows * K), ot.side)
    e_b = expected_ceil_binomial(ncols, np.full(ncols.shape, ot.dB), ot.side)
    cycles = np.ceil(K * e_a * e_b - 1e-9).astype(np.int64)
    rec.add(tt * per_tile + _FIRST_MMA + cc, op=OP["MMA_SP"], unit=FIRST_CORE_UNIT + cc, operand=OPERAND["-"],
            m0=r0, mt=mrows, n0=ot.col0[t_n] + cj[cc] * ot.Tn, nt=ncols, kt=K, macs_alg=mrows * K * ncols,
            macs_act=np.rint(nnz * ot.dB * ncols).astype(np.int64), cycles=cycles)


def _outer_info(spec: LayerSpec, plan: ExecPlan, ot: OuterTiles, traffic: DramTraffic) -> dict:
    return {
        "dataflow": "outer-product",
        "execution": plan.description,
        "fallback": None,
        "nm": None,
        "block_skipping": False,
        "native": True,
        "groups_per_cycle": 0,
        "lane_utilization": 1.0,
        "lrf_meta_bits": 0,
        "K_alg": spec.K,
        "macs_alg": int(spec.M * spec.K * spec.N),
        **traffic.info(),
        "weight_density": spec.weight_density,
        "activation_density": ot.dB,
        "n_tile": int(ot.Tn),
        "rows_per_pass": ot.cm * ot.Tm,
        "array_side": ot.side,
    }


def lower_outer(spec: LayerSpec, arch: Arch, layer: int) -> tuple[dict, dict]:
    """Records and plan info of one layer: each core owns a ``tile_m x tile_n`` output tile and,
    per K step, multiplies the non-zero weights of a tile column by the non-zero activations of a
    tile row on a ``side x side`` array."""
    plan = plan_layer(spec, arch)
    ot = _tiles(spec, arch)
    per_tile = _FIRST_MMA + 1 + ot.C
    traffic, a_loads, b_loads = _dram_loads(spec, arch, ot)
    rec = RecordBuilder()
    a_loads.add(rec, ot.pm * ot.pn.size * per_tile + _LD_DRAM_A)
    b_loads.add(rec, ot.pn * per_tile + _LD_DRAM_B)
    _tile_records(rec, ot, per_tile)
    _mmas(rec, ot, per_tile)
    add_refetches_and_sync(rec, ot.pm.size * ot.pn.size * per_tile, a_loads, b_loads, traffic)
    return rec.build(layer), _outer_info(spec, plan, ot, traffic)
