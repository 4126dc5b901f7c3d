"""Invariants of the simulator on random layers and patterns (simulator-reference.md sec. 7)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crisp.backends.stc_trace import trace_from_layers
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.ir.conv_geometry import ConvGeometry
from crisp.ir.layer_info import LayerInfo
from crisp.sparsity.pattern import Pattern
from crisp.runtime.simulator import COMPONENTS, get_arch
from crisp.runtime.simulator.records import OP, OPERAND
from crisp.runtime.simulator.synthetic import random_layers
from crisp.simulate_api import simulate

DESIGNS = ("crisp-stc", "nvidia-stc", "dstc", "tc")


def _sim(layers, arch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate(layers, arch)


shape_st = st.one_of(
    st.tuples(st.integers(4, 80), st.integers(2, 40), st.sampled_from([1, 3]), st.integers(1, 60)),
    st.tuples(st.integers(4, 90), st.integers(8, 130), st.just(0), st.integers(1, 3)),
)


@settings(max_examples=25, deadline=None)
@given(
    nm=st.sampled_from([(1, 4), (2, 4), (3, 4)]),
    block=st.sampled_from([4, 8, 16]),
    frac=st.floats(0.0, 1.0),
    shapes=st.lists(shape_st, min_size=1, max_size=3),
    batch=st.integers(1, 2),
    seed=st.integers(0, 1000),
)
def test_bounds_and_mac_counts_hold_for_random_layers(nm, block, frac, shapes, batch, seed):
    p = Pattern(nm[0], nm[1], block)
    sparsity = p.min_sparsity + frac * (0.97 - p.min_sparsity)
    spec = {}
    for i, (rows, cin, k, pos) in enumerate(shapes):
        spec[f"l{i}"] = (((rows, cin, k, k), pos, 1) if k else ((rows, cin), pos, 1))
    layers = random_layers(p, sparsity, spec, batch=batch, seed=seed)
    for design in DESIGNS:
        arch = get_arch(design)
        res = _sim(layers, arch)
        for info, lr in zip(layers, res.layers):
            M, K = info.gemm_shape
            N = info.out_positions * batch
            # 1-2: cycles cover compute and every bandwidth, metadata included
            assert lr.cycles >= math.ceil(lr.macs_act / arch.total_macs)
            assert lr.cycles >= (lr.smem_read_bytes + lr.smem_read_meta_bytes) / arch.smem_read_bw - 1e-6
            assert lr.cycles >= (lr.dram_read_bytes + lr.dram_read_meta_bytes) / arch.smem_write_bw - 1e-6
            assert lr.cycles >= (lr.dram_read_bytes + lr.dram_read_meta_bytes) / arch.dram_read_bw - 1e-6
            assert lr.cycles >= lr.dram_write_bytes / arch.dram_write_bw - 1e-6
            # 3: actual <= algorithmic; energies are non-negative
            assert 0 < lr.macs_act <= lr.macs_alg
            assert all(lr.energy_pj[c] >= 0 for c in COMPONENTS)
            # 4: actual MACs per design
            if design == "crisp-stc":
                assert lr.macs_act == info.macs_kept * batch == int(info.mask.sum()) * N
                assert lr.macs_alg == M * info.compact.num_block_cols * block * N
            elif design == "nvidia-stc":
                want = M * math.ceil(K / 4) * 2 * N if p.n * 2 <= p.m else M * K * N
                assert lr.macs_act == want
            elif design == "tc":
                assert lr.macs_act == M * K * N
                assert lr.macs_alg == M * math.ceil(K / 4) * 4 * N
            else:  # DSTC: expected d_A x d_B x M K N, rounded per core tile (at most 1/2 each)
                expect = info.macs_kept * batch * arch.activation_density
                tiles = math.ceil(M / arch.tile_m) * math.ceil(N / arch.tile_n)
                assert abs(lr.macs_act - expect) <= 0.5 * tiles + 1e-9
        # 7: NVIDIA-STC is never more than 2x faster than dense
        tc = _sim(layers, "tc")
        if design == "nvidia-stc":
            for a, b in zip(res.layers, tc.layers):
                assert b.cycles / a.cycles <= 2.0 + 1e-9


@settings(max_examples=12, deadline=None)
@given(nm=st.sampled_from([(1, 4), (2, 4), (3, 4)]), block=st.sampled_from([8, 16, 32]),
       kb=st.integers(1, 6), mb=st.integers(1, 3), pos=st.integers(1, 80), seed=st.integers(0, 100))
def test_crisp_speedup_never_beats_the_inverse_density(nm, block, kb, mb, pos, seed):
    p = Pattern(nm[0], nm[1], block)
    layers = random_layers(p, p.min_sparsity + 0.3 * (1 - p.min_sparsity),
                           {"g": ((mb * 64, kb * block), pos, 1)}, seed=seed)
    crisp_res, tc = _sim(layers, "crisp-stc"), _sim(layers, "tc")
    h = layers[0].compact
    density = h.kept_blocks_per_row / h.num_block_cols * p.n / p.m
    assert tc.cycles / crisp_res.cycles <= 1 / density + 1e-9


def _nested_layer(rows: int, cin: int, k: int, pattern: Pattern, keep: int, seed: int) -> LayerInfo:
    """A conv layer keeping the ``keep`` best blocks of every block-row (nested in ``keep``)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cin, k, k, generator=gen)
    K = cin * k * k
    b = pattern.block
    nbr, nbc = -(-rows // b), -(-K // b)
    scores = torch.rand(nbr * b, nbc * b // pattern.m, pattern.m, generator=gen)
    top = scores.topk(pattern.n, dim=-1).indices
    nm = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True).reshape(nbr * b, nbc * b)
    order = torch.rand(nbr, nbc, generator=gen).argsort(dim=1, descending=True)
    kept = torch.zeros(nbr, nbc, dtype=torch.bool).scatter_(1, order[:, :keep], True)
    mask = (nm & kept.repeat_interleave(b, 0).repeat_interleave(b, 1))[:rows, :K]
    from crisp.sparsity.gemm_view import gemm_to_weight

    wmask = gemm_to_weight(mask, tuple(w.shape))
    return LayerInfo(name="conv", kind="conv", weight_name="conv.weight", weight_shape=tuple(w.shape),
                     gemm_shape=(rows, K), out_positions=100, batch=1, prunable=True, reason="pruned",
                     conv=ConvGeometry((k, k)), mask=wmask,
                     compact=HybridSparseTensor.from_dense(w, wmask, pattern))


@pytest.mark.parametrize("nm,block", [((2, 4), 16), ((1, 4), 8), ((3, 4), 32)])
def test_fewer_kept_blocks_never_cost_more(nm, block):
    p = Pattern(nm[0], nm[1], block)
    rows, cin, k = 96, 16, 3
    nbc = -(-cin * k * k // block)
    prev = None
    for keep in range(nbc, 0, -1):
        r = _sim([_nested_layer(rows, cin, k, p, keep, seed=3)], "crisp-stc").layers[0]
        now = (r.cycles, r.macs_act, r.dram_read_bytes, r.dram_read_meta_bytes, r.smem_read_bytes,
               r.smem_read_meta_bytes, r.energy_uj)
        if prev is not None:
            assert all(a <= b + 1e-9 for a, b in zip(now, prev)), (keep, now, prev)
        prev = now
    assert prev[0] < _sim([_nested_layer(rows, cin, k, p, nbc, seed=3)], "crisp-stc").cycles


def test_all_blocks_kept_and_n_equal_m_runs_like_dense():
    """Dense limit: same cycles and data traffic as TC; the only extra traffic is the metadata the
    format still stores (block indices and offsets), which a compute-bound layer hides."""
    p = Pattern(4, 4, 16)
    layers = random_layers(p, 0.0, {"a": ((64, 32, 1, 1), 50, 1), "b": ((128, 64), 200, 1)})
    c, t = _sim(layers, "crisp-stc"), _sim(layers, "tc")
    for info, a, b in zip(layers, c.layers, t.layers):
        assert (a.cycles, a.macs_act, a.macs_alg, a.bound) == (b.cycles, b.macs_act, b.macs_alg, "compute")
        assert (a.dram_read_bytes, a.smem_read_bytes, a.dram_write_bytes) == (b.dram_read_bytes, b.smem_read_bytes,
                                                                              b.dram_write_bytes)
        assert a.dram_read_meta_bytes == info.compact.metadata_nbytes and b.dram_read_meta_bytes == 0


def _energy_from_records(cols, arch, infos):
    """Energy per layer recomputed from the trace's records and the table (independent of replay)."""
    e = arch.energy
    out = []
    for li, info in enumerate(infos):
        sel = cols["layer"] == li
        op, nbytes, meta = cols["op"][sel], cols["bytes"][sel], cols["meta_bytes"][sel]
        mma = (op == OP["MMA"]) | (op == OP["MMA_SP"])
        smem = (op == OP["LD_SMEM"]) | (op == OP["LD_META"])
        dram, st_ = op == OP["LD_DRAM"], op == OP["ST"]
        macs = cols["macs_act"][sel][mma].sum()
        a_words = nbytes[smem & (cols["operand"][sel] == OPERAND["A"])].sum()
        z_updates = (cols["mt"][sel][mma] * cols["cycles"][sel][mma]).sum()
        pj = macs * e.mac
        pj += (a_words + macs) * e.lrf + (a_words + macs) * info["lrf_meta_bits"] / 8 * e.lrf_meta
        pj += z_updates * (e.rf_read + e.rf_write)
        pj += nbytes[smem].sum() / 64 * e.smem_read_row + nbytes[dram].sum() / 64 * e.smem_write_row
        pj += meta[smem].sum() * 8 / 64 * e.smem_meta_read + meta[dram].sum() * 8 / 64 * e.smem_meta_write
        pj += (nbytes[dram].sum() + nbytes[st_].sum()) * e.dram_per_byte
        out.append(pj / 1e6)
    return out


@pytest.mark.parametrize("design", ["crisp-stc", "nvidia-stc", "tc"])
def test_trace_totals_equal_simulator_totals(design):
    p = Pattern(2, 4, 16)
    layers = random_layers(p, 0.85, batch=2, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = trace_from_layers(layers, design)
    res = _sim(layers, design)
    c = tr.columns
    mma = (c["op"] == OP["MMA"]) | (c["op"] == OP["MMA_SP"])
    smem = (c["op"] == OP["LD_SMEM"]) | (c["op"] == OP["LD_META"])
    assert int(c["macs_act"][mma].sum()) == res.macs_act == tr.totals["macs_act"]
    assert int(c["bytes"][smem].sum()) == tr.totals["smem_read_bytes"] == sum(l.smem_read_bytes for l in res.layers)
    assert int(c["meta_bytes"].sum()) == sum(l.smem_read_meta_bytes + l.dram_read_meta_bytes for l in res.layers)
    assert int(c["end"].max()) == res.cycles == tr.totals["cycles"]
    assert np.all(np.diff(c["seq"]) > 0) and np.all(c["end"] >= c["start"])
    # 10: energy from the records and the table equals the reported energy
    ours = _energy_from_records(c, get_arch(design), tr.infos)
    assert ours == pytest.approx([l.energy_uj for l in res.layers], rel=1e-9)


def test_metadata_and_weights_follow_the_format():
    p = Pattern(2, 4, 16)
    layers = random_layers(p, 0.8, seed=2)
    tr = trace_from_layers(layers, "crisp-stc")
    c = tr.columns
    for li, info in enumerate(layers):
        sel = (c["layer"] == li) & (c["op"] == OP["LD_DRAM"]) & (c["operand"] == OPERAND["A"])
        h = info.compact
        assert tr.infos[li]["weight_repeats"] == 1
        assert int(c["meta_bytes"][sel].sum()) == h.metadata_nbytes  # metadata moved = metadata stored
        assert int(c["bytes"][sel].sum()) == h.num_values  # every stored weight loaded once (int8 words)
        # 9: MMA_SP only on kept blocks, and every kept block of every real row runs
        mma = (c["layer"] == li) & (c["op"] == OP["MMA_SP"])
        ran = set(zip(c["block_row"][mma].tolist(), c["block_col"][mma].tolist()))
        cols = h.block_cols.numpy()
        kept = {(r, int(b)) for r in range(cols.shape[0]) for b in cols[r]}
        assert ran == kept


def test_same_inputs_give_the_same_trace_bytes(tmp_path):
    p = Pattern(1, 4, 8)
    a = trace_from_layers(random_layers(p, 0.9, seed=11), "crisp-stc")
    b = trace_from_layers(random_layers(p, 0.9, seed=11), "crisp-stc")
    a.save(tmp_path / "a.trc")
    b.save(tmp_path / "b.trc")
    assert (tmp_path / "a.trc").read_bytes() == (tmp_path / "b.trc").read_bytes()
    assert simulate(a).to_dict() == simulate(b).to_dict()
