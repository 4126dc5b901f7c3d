"""Lower layers to instruction records for one architecture (the tile schedule).

SIMD dataflow (TC, NVIDIA-STC, CRISP-STC, Sparseloop's STC family), weight-stationary:

- a *pass* covers ``core_rows x n_cores`` output rows (each core takes ``core_rows``); an *N
  tile* covers the output positions whose accumulators fit a core's RF;
- per (pass, N tile): the activations the pass needs are read from SMEM once and broadcast to
  the cores (LD_SMEM B: the union of the kept block columns of the pass's block-rows with block
  skipping, all of K otherwise), the pass's stored weights and their metadata are read
  (LD_SMEM A, LD_META), each core runs its MMAs (MMA_SP per kept block with block skipping, one
  MMA over K otherwise), and the outputs are written back (ST);
- a core row covers ``floor(lanes / n)`` groups of m per cycle, so an MMA over ``kt`` columns
  takes ``nt x ceil(kt / m / groups_per_cycle)`` cycles;
- DRAM: each operand once, unless it does not fit the resident share of SMEM: then the cheaper
  of (weights resident, activations re-read per weight chunk) and the converse. Activations of a
  conv come from DRAM as the input feature map (im2col happens on chip), only the channels that
  some kept block needs.

Outer-product dataflow (DSTC): each core owns a ``tile_m x tile_n`` output tile; per K step it
multiplies the non-zero weights of a tile column by the non-zero activations of a tile row on a
``side x side`` array, taking ``ceil(nnz_a/side) x ceil(nnz_b/side)`` cycles. Expected over
random sparsity, that is the compute model; weights and activations travel compressed with a
1-bit-per-position bitmask.

Every function is vectorised over tiles: the Python loop is over layers only.
"""

from __future__ import annotations

import math

import numpy as np

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.plan import plan_layer
from crisp.runtime.simulator.records import FIRST_CORE_UNIT, OP, OPERAND, UNIT, RecordBuilder, concat_columns
from crisp.runtime.simulator.workload import LayerSpec, offset_bits, pow2_bits


def _ceil_div(a, b):
    return -(-np.asarray(a) // b)


def prorate(total: int, weights: np.ndarray) -> np.ndarray:
    """Split integer ``total`` in proportion to ``weights`` so that the parts sum to it exactly."""
    w = np.asarray(weights, dtype=np.float64)
    s = w.sum()
    if s <= 0 or total == 0:
        return np.zeros(w.shape, dtype=np.int64)
    cum = np.rint(np.cumsum(w) / s * total).astype(np.int64)
    return np.diff(np.concatenate([[0], cum]))


def _dram_plan(a_bytes: int, b_bytes: int, arch: Arch, a_meta: int = 0) -> tuple[int, int, str]:
    """(weight repeats, activation repeats, which operand stays resident). ``a_bytes`` includes the
    weights' ``a_meta`` metadata bytes; on equal traffic, fewer data bytes win (metadata costs
    DRAM bandwidth but no DRAM energy)."""
    cap = arch.smem_bytes * arch.smem_resident_fraction
    chunks_a = max(1, math.ceil(a_bytes / cap))
    chunks_b = max(1, math.ceil(b_bytes / cap))
    if chunks_a == 1 and chunks_b == 1:
        return 1, 1, "both"
    # weights resident in chunks, activations streamed once per chunk -- or the converse
    opt_a = (a_bytes + b_bytes * chunks_a, (a_bytes - a_meta) + b_bytes * chunks_a)
    opt_b = (b_bytes + a_bytes * chunks_b, b_bytes + (a_bytes - a_meta) * chunks_b)
    return (1, chunks_a, "weights") if opt_a <= opt_b else (chunks_b, 1, "activations")


def _activation_dram_bytes(spec: LayerSpec, col_mask: np.ndarray | None) -> int:
    """Bytes of activations a layer needs from DRAM (one copy). ``col_mask``: bool [K] of the
    reduction columns that some kept block needs (None: all)."""
    needed_cols = spec.K if col_mask is None else int(col_mask.sum())
    gemm_bytes = needed_cols * spec.N * spec.groups
    if not spec.in_channels or spec.in_positions <= 0:
        return gemm_bytes
    cin_g = spec.in_channels // spec.groups
    if col_mask is None:
        channels = spec.in_channels
    elif spec.kernel_positions * cin_g == spec.K:
        channels = int(col_mask.reshape(spec.kernel_positions, cin_g).any(0).sum()) * spec.groups
    else:
        channels = spec.in_channels
    return min(channels * spec.in_positions, gemm_bytes)


# ---------------------------------------------------------------------------------------- SIMD
def lower_simd(spec: LayerSpec, arch: Arch, layer: int) -> tuple[dict, dict]:
    plan = plan_layer(spec, arch)
    r, C, L, wb = arch.core_rows, arch.n_cores, arch.lanes_per_row, arch.word_bytes
    rp = r * C
    if plan.nm:
        n_, m_ = plan.nm
    else:
        n_, m_ = 1, 1
    gpc = L // n_
    kq = gpc * m_  # dense-equivalent reduction columns per row per cycle
    g, K, N = spec.groups, spec.K, spec.N
    Mg = spec.M // g
    P = -(-Mg // rp)
    PP = g * P
    nt = min(N, arch.n_tile)
    T = -(-N // nt)
    ntr = np.minimum(nt, N - np.arange(T) * nt)  # [T]
    pp = np.arange(PP)
    grp, p = pp // P, pp % P
    row0 = p * rp
    rows = np.clip(Mg - row0, 0, rp)

    # ---- stored weights and metadata of each pass
    if plan.skip:
        b, k = spec.block, spec.kept_blocks_per_row
        nbr, nbc = spec.num_block_rows, spec.num_block_cols
        mpad = nbr * b
        if plan.native:
            per_row = spec.stored_values // mpad
            md_total = spec.metadata_bytes
            lrf_bits = offset_bits(m_) if plan.nm else 0
        else:
            per_row = k * b * n_ // m_
            lrf_bits = offset_bits(m_) if plan.nm else 0
            md_total = nbr * k * spec.index_bytes + math.ceil(mpad * per_row * lrf_bits / 8)
        cov_end = np.minimum(row0 + rp, mpad)
        cov_end[-1] = mpad
        cov = cov_end - row0
        vals = cov * per_row
        md = prorate(md_total, cov)
        kb = spec.kept_block_matrix()
        cum = np.vstack([np.zeros((1, nbc), dtype=np.int64), np.cumsum(kb, axis=0, dtype=np.int64)])
        br_lo = row0 // b
        br_hi = (row0 + np.maximum(rows, 1) - 1) // b
        union = (cum[br_hi + 1] - cum[br_lo]) > 0  # [PP, nbc]
        width = np.minimum(b, K - np.arange(nbc) * b)
        need = union.astype(np.int64) @ width
        layer_cols = np.repeat(kb.any(0), b)[:K]
        k_alg = nbc * b
    else:
        if plan.nm:
            per_row = -(-K // m_) * n_
            lrf_bits = pow2_bits(m_)
        else:
            per_row, lrf_bits = K, 0
        vals = rows * per_row
        md = prorate(math.ceil(int(vals.sum()) * lrf_bits / 8), rows)
        need = np.full(PP, K, dtype=np.int64)
        layer_cols = None
        k_alg = -(-K // kq) * kq
    a_bytes = int(vals.sum()) * wb + int(md.sum())
    b_bytes = _activation_dram_bytes(spec, layer_cols) * wb
    rep_a, rep_b, resident = _dram_plan(a_bytes, b_bytes, arch, int(md.sum()))
    b_tile = prorate(b_bytes, ntr)

    # ---- per (pass, N tile) records
    TT = PP * T
    t_pp = np.repeat(pp, T)
    t_t = np.tile(np.arange(T), PP)
    t_nt = ntr[t_t]
    t_n0 = t_t * nt
    t_m0 = grp[t_pp] * Mg + row0[t_pp]
    t_rows = rows[t_pp]
    if plan.skip:
        sub = r if spec.block % r == 0 else math.gcd(r, spec.block)
        S = r // sub
        per_tile = 6 + C * S * spec.kept_blocks_per_row
    else:
        sub, S = r, 1
        per_tile = 6 + C
    base = (pp * T) * per_tile
    rec = RecordBuilder()
    ld = OP["LD_DRAM"]
    rec.add(base + 0, op=ld, unit=UNIT["dma"], operand=OPERAND["A"], m0=grp * Mg + row0, mt=rows, kt=K,
            bytes=vals * wb, meta_bytes=md)
    rec.add(np.arange(T) * per_tile + 1, op=ld, unit=UNIT["dma"], operand=OPERAND["B"], n0=np.arange(T) * nt,
            nt=ntr, kt=K, bytes=b_tile)
    tkey = np.arange(TT) * per_tile
    rec.add(tkey + 2, op=OP["LD_SMEM"], unit=UNIT["smem"], operand=OPERAND["B"], n0=t_n0, nt=t_nt,
            kt=need[t_pp], m0=t_m0, bytes=need[t_pp] * t_nt * wb)
    rec.add(tkey + 3, op=OP["LD_SMEM"], unit=UNIT["smem"], operand=OPERAND["A"], m0=t_m0, mt=t_rows, kt=K,
            n0=t_n0, bytes=vals[t_pp] * wb)
    has_md = md[t_pp] > 0
    rec.add(tkey[has_md] + 4, op=OP["LD_META"], unit=UNIT["smem"], operand=OPERAND["A"], m0=t_m0[has_md],
            mt=t_rows[has_md], kt=K, n0=t_n0[has_md], meta_bytes=md[t_pp][has_md])
    rec.add(tkey + per_tile - 1, op=OP["ST"], unit=UNIT["wb"], operand=OPERAND["Z"], m0=t_m0, mt=t_rows,
            n0=t_n0, nt=t_nt, bytes=t_rows * t_nt * wb)
    mma_op = OP["MMA_SP"] if plan.nm else OP["MMA"]
    nm_cols = {"nm_n": n_, "nm_m": m_} if plan.nm else {}

    # ---- MMAs: slices of core rows x (kept blocks | all of K) x N tiles
    q = np.arange(PP * C * S)
    q_pp, q_c, q_s = q // (C * S), (q // S) % C, q % S
    s_row0 = row0[q_pp] + q_c * r + q_s * sub
    s_real = np.clip(Mg - s_row0, 0, sub)
    live = s_real > 0
    q_pp, q_c, q_s, s_row0, s_real = q_pp[live], q_c[live], q_s[live], s_row0[live], s_real[live]
    if plan.skip:
        b, k = spec.block, spec.kept_blocks_per_row
        slice_nnz = spec.row_block_nnz.reshape(-1, sub, k).sum(1)  # [Mpad/sub, k]
        br = s_row0 // b
        Q = q_pp.size
        j = np.tile(np.arange(k), Q)
        qi = np.repeat(np.arange(Q), k)
        bc = spec.block_cols[br[qi], j].astype(np.int64)
        w = np.minimum(b, K - bc * b)
        if plan.native:
            per_t = slice_nnz[s_row0[qi] // sub, j]
        elif plan.nm:
            per_t = s_real[qi] * (-(-w // m_)) * n_
        else:
            per_t = s_real[qi] * w
        c_per_n = -(-(b // m_) // gpc)
        # replicate over N tiles
        R = qi.size
        rt = np.tile(np.arange(T), R)
        ri = np.repeat(np.arange(R), T)
        qq = qi[ri]
        ntt = ntr[rt]
        key = ((q_pp[qq] * T + rt) * per_tile + 5 + (q_c[qq] * S + q_s[qq]) * k + j[ri])
        rec.add(key, op=mma_op, unit=FIRST_CORE_UNIT + q_c[qq], operand=OPERAND["-"], m0=s_row0[qq], mt=s_real[qq],
                n0=rt * nt, nt=ntt, k0=bc[ri] * b, kt=b, macs_alg=s_real[qq] * b * ntt, macs_act=per_t[ri] * ntt,
                cycles=ntt * c_per_n, block_row=br[qq], block_col=bc[ri], **nm_cols)
    else:
        if plan.nm:
            per_row_act = -(-K // m_) * n_
        else:
            per_row_act = K
        c_per_n = k_alg // kq
        R = q_pp.size
        rt = np.tile(np.arange(T), R)
        ri = np.repeat(np.arange(R), T)
        ntt = ntr[rt]
        key = (q_pp[ri] * T + rt) * per_tile + 5 + q_c[ri]
        rec.add(key, op=mma_op, unit=FIRST_CORE_UNIT + q_c[ri], operand=OPERAND["-"],
                m0=grp[q_pp[ri]] * Mg + s_row0[ri], mt=s_real[ri], n0=rt * nt, nt=ntt, kt=k_alg,
                macs_alg=s_real[ri] * k_alg * ntt, macs_act=s_real[ri] * per_row_act * ntt, cycles=ntt * c_per_n,
                **nm_cols)

    # ---- capacity refetches (after the tiles) and the closing sync
    end_key = TT * per_tile
    if rep_a > 1:
        reps = np.repeat(np.arange(1, rep_a), PP)
        pidx = np.tile(pp, rep_a - 1)
        rec.add(end_key + np.arange(reps.size), op=ld, unit=UNIT["dma"], operand=OPERAND["A"],
                m0=grp[pidx] * Mg + row0[pidx], mt=rows[pidx], kt=K, bytes=vals[pidx] * wb, meta_bytes=md[pidx])
    if rep_b > 1:
        tidx = np.tile(np.arange(T), rep_b - 1)
        rec.add(end_key + PP * rep_a + np.arange(tidx.size), op=ld, unit=UNIT["dma"], operand=OPERAND["B"],
                n0=tidx * nt, nt=ntr[tidx], kt=K, bytes=b_tile[tidx])
    rec.add([end_key + PP * rep_a + T * rep_b + 1], op=OP["SYNC"], unit=UNIT["ctrl"])
    cols = rec.build(layer)

    lane_util = gpc * n_ / L
    info = {
        "dataflow": "simd",
        "execution": plan.description,
        "fallback": plan.fallback,
        "nm": list(plan.nm) if plan.nm else None,
        "block_skipping": plan.skip,
        "native": plan.native,
        "groups_per_cycle": gpc,
        "lane_utilization": lane_util,
        "lrf_meta_bits": lrf_bits,
        "K_alg": int(k_alg),
        "macs_alg": int(spec.M * k_alg * N),
        "dram_weight_bytes": a_bytes,
        "dram_activation_bytes": b_bytes,
        "weight_repeats": rep_a,
        "activation_repeats": rep_b,
        "resident": resident,
        "weight_density": spec.weight_density,
        "activation_density": 1.0,
        "n_tile": int(nt),
        "rows_per_pass": rp,
    }
    return cols, info


# ------------------------------------------------------------------------------ outer product
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


def lower_outer(spec: LayerSpec, arch: Arch, layer: int) -> tuple[dict, dict]:
    plan = plan_layer(spec, arch)
    side, Tm, Tn, C, wb = arch.array_side, arch.tile_m, arch.tile_n, arch.n_cores, arch.word_bytes
    cm = max(d for d in range(1, int(math.isqrt(C)) + 1) if C % d == 0)
    cn = C // cm
    dB = arch.activation_density
    g, K, N = spec.groups, spec.K, spec.N
    Mg = spec.M // g
    row_nnz = spec.row_nnz if spec.row_nnz is not None else np.full(spec.M, K, dtype=np.int64)
    cum_nnz = np.concatenate([[0], np.cumsum(row_nnz)])
    PM = -(-Mg // (cm * Tm))
    PPM = g * PM
    PN = -(-N // (cn * Tn))
    pm = np.arange(PPM)
    grp, pl = pm // PM, pm % PM
    row0 = grp * Mg + pl * cm * Tm  # global row
    rows_m = np.clip(Mg - pl * cm * Tm, 0, cm * Tm)
    nnz_m = cum_nnz[row0 + rows_m] - cum_nnz[row0]
    pn = np.arange(PN)
    col0 = pn * cn * Tn
    cols_n = np.clip(N - col0, 0, cn * Tn)
    a_meta_pass = _ceil_div(rows_m * K, 8)
    b_vals_pass = np.rint(dB * K * cols_n).astype(np.int64)
    b_meta_pass = _ceil_div(K * cols_n, 8)

    per_tile = 5 + C
    TT = PPM * PN
    t_m = np.repeat(pm, PN)
    t_n = np.tile(pn, PPM)
    tkey = np.arange(TT) * per_tile
    rec = RecordBuilder()
    nnz_total = int(row_nnz.sum())
    a_meta_total = math.ceil(spec.M * K / 8)
    fmap = _activation_dram_bytes(spec, None)
    b_vals_total = int(round(dB * fmap))
    b_meta_total = math.ceil(fmap / 8)
    a_bytes = nnz_total * wb + a_meta_total
    b_bytes = b_vals_total * wb + b_meta_total
    rep_a, rep_b, resident = _dram_plan(a_bytes, b_bytes, arch, a_meta_total)
    a_dram_vals = nnz_m * wb
    a_dram_meta = prorate(a_meta_total, rows_m)
    b_dram_vals = prorate(b_vals_total * wb, cols_n)
    b_dram_meta = prorate(b_meta_total, cols_n)
    ld = OP["LD_DRAM"]
    rec.add(pm * PN * per_tile + 0, op=ld, unit=UNIT["dma"], operand=OPERAND["A"], m0=row0, mt=rows_m, kt=K,
            bytes=a_dram_vals, meta_bytes=a_dram_meta)
    rec.add(pn * per_tile + 1, op=ld, unit=UNIT["dma"], operand=OPERAND["B"], n0=col0, nt=cols_n, kt=K,
            bytes=b_dram_vals, meta_bytes=b_dram_meta)
    rec.add(tkey + 2, op=OP["LD_SMEM"], unit=UNIT["smem"], operand=OPERAND["A"], m0=row0[t_m], mt=rows_m[t_m],
            n0=col0[t_n], kt=K, bytes=nnz_m[t_m] * wb, meta_bytes=a_meta_pass[t_m])
    rec.add(tkey + 3, op=OP["LD_SMEM"], unit=UNIT["smem"], operand=OPERAND["B"], m0=row0[t_m], n0=col0[t_n],
            nt=cols_n[t_n], kt=K, bytes=b_vals_pass[t_n] * wb, meta_bytes=b_meta_pass[t_n])
    rec.add(tkey + per_tile - 1, op=OP["ST"], unit=UNIT["wb"], operand=OPERAND["Z"], m0=row0[t_m], mt=rows_m[t_m],
            n0=col0[t_n], nt=cols_n[t_n], bytes=rows_m[t_m] * cols_n[t_n] * wb)
    # MMAs: one per core per tile
    c = np.arange(C)
    ci, cj = c // cn, c % cn
    tt = np.repeat(np.arange(TT), C)
    cc = np.tile(c, TT)
    mrows = np.clip(rows_m[t_m[tt]] - ci[cc] * Tm, 0, Tm)
    ncols = np.clip(cols_n[t_n[tt]] - cj[cc] * Tn, 0, Tn)
    live = (mrows > 0) & (ncols > 0)
    tt, cc, mrows, ncols = tt[live], cc[live], mrows[live], ncols[live]
    r0 = row0[t_m[tt]] + ci[cc] * Tm
    nnz = cum_nnz[r0 + mrows] - cum_nnz[r0]
    dA = nnz / (mrows * K)
    e_a = expected_ceil_binomial(mrows, dA, side)
    e_b = expected_ceil_binomial(ncols, np.full(ncols.shape, dB), side)
    cycles = np.ceil(K * e_a * e_b - 1e-9).astype(np.int64)
    rec.add(tt * per_tile + 4 + cc, op=OP["MMA_SP"], unit=FIRST_CORE_UNIT + cc, operand=OPERAND["-"], m0=r0,
            mt=mrows, n0=col0[t_n[tt]] + cj[cc] * Tn, nt=ncols, kt=K, macs_alg=mrows * K * ncols,
            macs_act=np.rint(nnz * dB * ncols).astype(np.int64), cycles=cycles)
    end_key = TT * per_tile
    if rep_a > 1:
        idx = np.tile(pm, rep_a - 1)
        rec.add(end_key + np.arange(idx.size), op=ld, unit=UNIT["dma"], operand=OPERAND["A"], m0=row0[idx],
                mt=rows_m[idx], kt=K, bytes=a_dram_vals[idx], meta_bytes=a_dram_meta[idx])
    if rep_b > 1:
        idx = np.tile(pn, rep_b - 1)
        rec.add(end_key + PPM * rep_a + np.arange(idx.size), op=ld, unit=UNIT["dma"], operand=OPERAND["B"],
                n0=col0[idx], nt=cols_n[idx], kt=K, bytes=b_dram_vals[idx], meta_bytes=b_dram_meta[idx])
    rec.add([end_key + PPM * rep_a + PN * rep_b + 1], op=OP["SYNC"], unit=UNIT["ctrl"])
    cols = rec.build(layer)
    info = {
        "dataflow": "outer-product",
        "execution": plan.description,
        "fallback": None,
        "nm": None,
        "block_skipping": False,
        "native": True,
        "groups_per_cycle": 0,
        "lane_utilization": 1.0,
        "lrf_meta_bits": 0,
        "K_alg": K,
        "macs_alg": int(spec.M * K * N),
        "dram_weight_bytes": a_bytes,
        "dram_activation_bytes": b_bytes,
        "weight_repeats": rep_a,
        "activation_repeats": rep_b,
        "resident": resident,
        "weight_density": spec.weight_density,
        "activation_density": dB,
        "n_tile": int(Tn),
        "rows_per_pass": cm * Tm,
        "array_side": side,
    }
    return cols, info


def lower_layers(specs: list[LayerSpec], arch: Arch) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Records of all layers (concatenated, ``seq`` numbered) and the per-layer plan info."""
    lower = lower_simd if arch.dataflow == "simd" else lower_outer
    parts, infos = [], []
    for i, spec in enumerate(specs):
        cols, info = lower(spec, arch, i)
        parts.append(cols)
        infos.append(info)
    return concat_columns(parts), infos
