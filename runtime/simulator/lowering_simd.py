"""Lowering of one layer on the weight-stationary SIMD dataflow (TC, NVIDIA-STC, CRISP-STC, Sparseloop's STC family)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.lowering_traffic import (DramLoads, DramTraffic, activation_dram_elements,
                                                      add_refetches_and_sync, dram_plan, prorate)
from crisp.runtime.simulator.plan import ExecPlan, plan_layer
from crisp.runtime.simulator.records import FIRST_CORE_UNIT, OP, OPERAND, UNIT, RecordBuilder
from crisp.runtime.simulator.workload import LayerSpec, offset_bits, pow2_bits

# slots of a (pass, N tile) record group: the MMAs follow LD_META, the ST comes last
_LD_DRAM_A, _LD_DRAM_B, _LD_SMEM_B, _LD_SMEM_A, _LD_META, _FIRST_MMA = range(6)


@dataclass(frozen=True)
class SimdPasses:
    """Pass and N-tile geometry of one layer: a pass covers ``rp = core_rows x n_cores`` output
    rows of one group, an N tile the ``nt`` positions whose accumulators fit a core's RF."""

    r: int  # rows per core
    C: int  # cores
    wb: int  # bytes per word
    rp: int  # rows per pass
    n: int  # n:m the hardware runs (1:1 when dense)
    m: int
    gpc: int  # groups of m a core row covers per cycle
    kq: int  # dense-equivalent reduction columns per row per cycle
    K: int
    N: int
    Mg: int  # rows per group
    PP: int  # passes over all groups
    nt: int  # N tile width
    T: int  # N tiles
    ntr: np.ndarray  # [T] width of each N tile
    pp: np.ndarray  # [PP] pass index
    grp: np.ndarray  # [PP] group of each pass
    row0: np.ndarray  # [PP] first row of each pass within its group
    rows: np.ndarray  # [PP] rows of each pass


@dataclass(frozen=True)
class PassWeights:
    """What each pass stores and reads: weight values, metadata bytes, activation columns."""

    vals: np.ndarray  # [PP] stored weight values
    md: np.ndarray  # [PP] metadata bytes
    need: np.ndarray  # [PP] activation columns read from SMEM
    layer_cols: np.ndarray | None  # bool [K]: columns some kept block needs (None: all)
    per_row: int  # stored values per row
    k_alg: int  # reduction length the loop nest runs
    lrf_bits: int  # metadata bits per stored value in the core's local RF


def _passes(spec: LayerSpec, arch: Arch, plan: ExecPlan) -> SimdPasses:
    r, C = arch.core_rows, arch.n_cores
    rp = r * C
    n, m = plan.nm if plan.nm else (1, 1)
    gpc = arch.lanes_per_row // n
    Mg = spec.M // spec.groups
    P = -(-Mg // rp)
    nt = min(spec.N, arch.n_tile)
    T = -(-spec.N // nt)
    pp = np.arange(spec.groups * P)
    row0 = (pp % P) * rp
    return SimdPasses(r=r, C=C, wb=arch.word_bytes, rp=rp, n=n, m=m, gpc=gpc, kq=gpc * m, K=spec.K, N=spec.N,
                      Mg=Mg, PP=pp.size, nt=nt, T=T, ntr=np.minimum(nt, spec.N - np.arange(T) * nt), pp=pp,
                      grp=pp // P, row0=row0, rows=np.clip(Mg - row0, 0, rp))


def _skip_weights(spec: LayerSpec, plan: ExecPlan, ps: SimdPasses) -> PassWeights:
    """With block skipping: each pass stores its rows' kept blocks and reads the union of the kept
    block columns of its block-rows."""
    b, k = spec.block, spec.kept_blocks_per_row
    nbr, nbc = spec.num_block_rows, spec.num_block_cols
    mpad = nbr * b
    lrf_bits = offset_bits(ps.m) if plan.nm else 0
    if plan.native:
        per_row = spec.stored_values // mpad
        md_total = spec.metadata_bytes
    else:
        per_row = k * b * ps.n // ps.m
        md_total = nbr * k * spec.index_bytes + math.ceil(mpad * per_row * lrf_bits / 8)
    cov_end = np.minimum(ps.row0 + ps.rp, mpad)
    cov_end[-1] = mpad
    cov = cov_end - ps.row0
    kb = spec.kept_block_matrix()
    cum = np.vstack([np.zeros((1, nbc), dtype=np.int64), np.cumsum(kb, axis=0, dtype=np.int64)])
    br_lo = ps.row0 // b
    br_hi = (ps.row0 + np.maximum(ps.rows, 1) - 1) // b
    union = (cum[br_hi + 1] - cum[br_lo]) > 0  # [PP, nbc]
    width = np.minimum(b, ps.K - np.arange(nbc) * b)
    return PassWeights(vals=cov * per_row, md=prorate(md_total, cov), need=union.astype(np.int64) @ width,
                       layer_cols=np.repeat(kb.any(0), b)[:ps.K], per_row=per_row, k_alg=nbc * b, lrf_bits=lrf_bits)


def _dense_weights(plan: ExecPlan, ps: SimdPasses) -> PassWeights:
    """Without block skipping: each pass stores all of K for its rows (n of every m with a pattern)."""
    if plan.nm:
        per_row, lrf_bits = -(-ps.K // ps.m) * ps.n, pow2_bits(ps.m)
    else:
        per_row, lrf_bits = ps.K, 0
    vals = ps.rows * per_row
    return PassWeights(vals=vals, md=prorate(math.ceil(int(vals.sum()) * lrf_bits / 8), ps.rows),
                       need=np.full(ps.PP, ps.K, dtype=np.int64), layer_cols=None, per_row=per_row,
                       k_alg=-(-ps.K // ps.kq) * ps.kq, lrf_bits=lrf_bits)


def _core_slices(spec: LayerSpec, plan: ExecPlan, r: int) -> tuple[int, int]:
    """(rows per MMA slice, slices per core): with block skipping a slice stays inside one block-row."""
    if plan.skip:
        sub = r if spec.block % r == 0 else math.gcd(r, spec.block)
        return sub, r // sub
    return r, 1


def _tile_records(rec: RecordBuilder, ps: SimdPasses, w: PassWeights, per_tile: int) -> None:
    """Per (pass, N tile): LD_SMEM of the activations (broadcast to the cores) and of the weights,
    LD_META where the pass has metadata, and the ST of the outputs."""
    t_pp = np.repeat(ps.pp, ps.T)
    t_t = np.tile(np.arange(ps.T), ps.PP)
    t_nt = ps.ntr[t_t]
    t_n0 = t_t * ps.nt
    t_m0 = ps.grp[t_pp] * ps.Mg + ps.row0[t_pp]
    t_rows = ps.rows[t_pp]
    tkey = np.arange(ps.PP * ps.T) * per_tile
    rec.add(tkey + _LD_SMEM_B, op=OP["LD_SMEM"], unit=UNIT["smem"], operand=OPERAND["B"], n0=t_n0, nt=t_nt,
            kt=w.need[t_pp], m0=t_m0, bytes=w.need[t_pp] * t_nt * ps.wb)
    rec.add(tkey + _LD_SMEM_A, op=OP["LD_SMEM"], unit=UNIT["smem"], operand=OPERAND["A"], m0=t_m0, mt=t_rows,
            kt=ps.K, n0=t_n0, bytes=w.vals[t_pp] * ps.wb)
    has_md = w.md[t_pp] > 0
    rec.add(tkey[has_md] + _LD_META, op=OP["LD_META"], unit=UNIT["smem"], operand=OPERAND["A"], m0=t_m0[has_md],
            mt=t_rows[has_md], kt=ps.K, n0=t_n0[has_md], meta_bytes=w.md[t_pp][has_md])
    rec.add(tkey + per_tile - 1, op=OP["ST"], unit=UNIT["wb"], operand=OPERAND["Z"], m0=t_m0, mt=t_rows,
            n0=t_n0, nt=t_nt, bytes=t_rows * t_nt * ps.wb)


def _mma_slices(ps: SimdPasses, sub: int, S: int) -> tuple[np.ndarray, ...]:
    """(pass, core, slice, first row, real rows) of every MMA slice holding at least one real row."""
    q = np.arange(ps.PP * ps.C * S)
    q_pp, q_c, q_s = q // (ps.C * S), (q // S) % ps.C, q % S
    s_row0 = ps.row0[q_pp] + q_c * ps.r + q_s * sub
    s_real = np.clip(ps.Mg - s_row0, 0, sub)
    live = s_real > 0
    return q_pp[live], q_c[live], q_s[live], s_row0[live], s_real[live]


def _mma_fields(plan: ExecPlan, ps: SimdPasses) -> dict:
    fields = {"op": OP["MMA_SP"] if plan.nm else OP["MMA"], "operand": OPERAND["-"]}
    return {**fields, "nm_n": ps.n, "nm_m": ps.m} if plan.nm else fields


def _skip_mmas(rec: RecordBuilder, spec: LayerSpec, plan: ExecPlan, ps: SimdPasses, slices: tuple, sub: int,
               S: int, per_tile: int) -> None:
    """One MMA_SP (or dense MMA) per slice x kept block x N tile."""
    q_pp, q_c, q_s, s_row0, s_real = slices
    b, k = spec.block, spec.kept_blocks_per_row
    br = s_row0 // b
    Q = q_pp.size
    j = np.tile(np.arange(k), Q)
    qi = np.repeat(np.arange(Q), k)
    bc = spec.block_cols[br[qi], j].astype(np.int64)
    width = np.minimum(b, ps.K - bc * b)
    # MACs per output position: the slice's kept weights in the block (native), else its stored values
    if plan.native:
        slice_nnz = spec.row_block_nnz.reshape(-1, sub, k).sum(1)  # [Mpad/sub, k]
        per_t = slice_nnz[s_row0[qi] // sub, j]
    elif plan.nm:
        per_t = s_real[qi] * (-(-width // ps.m)) * ps.n
    else:
        per_t = s_real[qi] * width
    c_per_n = -(-(b // ps.m) // ps.gpc)
    R = qi.size
    rt = np.tile(np.arange(ps.T), R)
    ri = np.repeat(np.arange(R), ps.T)
    qq = qi[ri]
    ntt = ps.ntr[rt]
    key = (q_pp[qq] * ps.T + rt) * per_tile + _FIRST_MMA + (q_c[qq] * S + q_s[qq]) * k + j[ri]
    rec.add(key, unit=FIRST_CORE_UNIT + q_c[qq], m0=s_row0[qq], mt=s_real[qq], n0=rt * ps.nt, nt=ntt,
            k0=bc[ri] * b, kt=b, macs_alg=s_real[qq] * b * ntt, macs_act=per_t[ri] * ntt, cycles=ntt * c_per_n,
            block_row=br[qq], block_col=bc[ri], **_mma_fields(plan, ps))


def _dense_mmas(rec: RecordBuilder, plan: ExecPlan, ps: SimdPasses, w: PassWeights, slices: tuple,
                per_tile: int) -> None:
    """One MMA over all of K per core x N tile."""
    q_pp, q_c, _, s_row0, s_real = slices
    c_per_n = w.k_alg // ps.kq
    R = q_pp.size
    rt = np.tile(np.arange(ps.T), R)
    ri = np.repeat(np.arange(R), ps.T)
    ntt = ps.ntr[rt]
    key = (q_pp[ri] * ps.T + rt) * per_tile + _FIRST_MMA + q_c[ri]
    rec.add(key, unit=FIRST_CORE_UNIT + q_c[ri], m0=ps.grp[q_pp[ri]] * ps.Mg + s_row0[ri], mt=s_real[ri],
            n0=rt * ps.nt, nt=ntt, kt=w.k_alg, macs_alg=s_real[ri] * w.k_alg * ntt,
            macs_act=s_real[ri] * w.per_row * ntt, cycles=ntt * c_per_n, **_mma_fields(plan, ps))


def _simd_info(spec: LayerSpec, arch: Arch, plan: ExecPlan, ps: SimdPasses, w: PassWeights,
               traffic: DramTraffic) -> dict:
    return {
        "dataflow": "simd",
        "execution": plan.description,
        "fallback": plan.fallback,
        "nm": list(plan.nm) if plan.nm else None,
        "block_skipping": plan.skip,
        "native": plan.native,
        "groups_per_cycle": ps.gpc,
        "lane_utilization": ps.gpc * ps.n / arch.lanes_per_row,
        "lrf_meta_bits": w.lrf_bits,
        "K_alg": int(w.k_alg),
        "macs_alg": int(spec.M * w.k_alg * ps.N),
        **traffic.info(),
        "weight_density": spec.weight_density,
        "activation_density": 1.0,
        "n_tile": int(ps.nt),
        "rows_per_pass": ps.rp,
    }


def lower_simd(spec: LayerSpec, arch: Arch, layer: int) -> tuple[dict, dict]:
    """Records and plan info of one layer, weight-stationary. Per (pass, N tile) the pass's
    activations are read from SMEM once and broadcast to the cores (with block skipping only the
    kept block columns of its block-rows), its weights and metadata are read, each core runs its
    MMAs (one MMA_SP per kept block with block skipping, one MMA over K otherwise) and the outputs
    are written back. A core row covers ``floor(lanes / n)`` groups of m per cycle, so an MMA over
    ``kt`` columns takes ``nt x ceil(kt / m / groups_per_cycle)`` cycles."""
    plan = plan_layer(spec, arch)
    ps = _passes(spec, arch, plan)
    w = _skip_weights(spec, plan, ps) if plan.skip else _dense_weights(plan, ps)
    md_bytes = int(w.md.sum())
    b_bytes = activation_dram_elements(spec, w.layer_cols) * ps.wb
    traffic = dram_plan(int(w.vals.sum()) * ps.wb + md_bytes, b_bytes, arch, md_bytes)
    sub, S = _core_slices(spec, plan, ps.r)
    per_tile = _FIRST_MMA + 1 + ps.C * S * (spec.kept_blocks_per_row if plan.skip else 1)
    rec = RecordBuilder()
    a_loads = DramLoads("A", ps.PP, {"m0": ps.grp * ps.Mg + ps.row0, "mt": ps.rows, "kt": ps.K,
                                     "bytes": w.vals * ps.wb, "meta_bytes": w.md})
    b_loads = DramLoads("B", ps.T, {"n0": np.arange(ps.T) * ps.nt, "nt": ps.ntr, "kt": ps.K,
                                    "bytes": prorate(b_bytes, ps.ntr)})
    a_loads.add(rec, ps.pp * ps.T * per_tile + _LD_DRAM_A)
    b_loads.add(rec, np.arange(ps.T) * per_tile + _LD_DRAM_B)
    _tile_records(rec, ps, w, per_tile)
    slices = _mma_slices(ps, sub, S)
    if plan.skip:
        _skip_mmas(rec, spec, plan, ps, slices, sub, S, per_tile)
    else:
        _dense_mmas(rec, plan, ps, w, slices, per_tile)
    add_refetches_and_sync(rec, ps.PP * ps.T * per_tile, a_loads, b_loads, traffic)
    return rec.build(layer), _simd_info(spec, arch, plan, ps, w, traffic)
