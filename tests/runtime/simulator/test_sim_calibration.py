"""Calibration: the simulator against Sparseloop's fig. 15 STC case study and the DSTC paper's
fig. 21 latency ratios (reference numbers in crisp.runtime.simulator.calibration)."""

from __future__ import annotations

import pytest

from crisp.runtime.simulator import LayerSpec, get_arch, simulate_specs
from crisp.runtime.simulator.calibration import STC_TABLE, dstc_ratio_calibration, stc_calibration

STC_ROWS = stc_calibration()


@pytest.mark.parametrize("row", STC_ROWS, ids=[f"{r['layer']}-{r['design']}-wd{r['weight_density']}" for r in STC_ROWS])
def test_tc_and_stc_cycles_within_10_percent_and_energy_within_15(row):
    assert abs(row["cycle_ratio"] - 1) <= 0.10, row
    assert abs(row["energy_ratio"] - 1) <= 0.15, row


def test_every_reference_run_is_checked():
    assert len(STC_ROWS) == len(STC_TABLE) == 28


def test_must_hit_points_are_exact():
    """The reference's must-hit points (M512-K1024-N256): TC 131072, STC 2:4 65536,
    STC_flexible 2:8 59295 (SMEM-bound) and 2:6 at K 1056 64366."""
    got = {(r["layer"], r["design"], r["weight_density"]): (r["cycles"], r["bound"]) for r in STC_ROWS}
    assert got[("M512-K1024-N256", "sl-tc", 1.0)] == (131072, "compute")
    assert got[("M512-K1024-N256", "sl-stc", 0.5)] == (65536, "compute")
    assert got[("M512-K1024-N256", "sl-stc-flexible", 0.25)] == (59295, "smem")
    assert got[("M512-K1056-N256", "sl-stc-flexible", 0.3333)] == (64366, "smem")


def test_stc_at_full_density_equals_tc_cycles_and_counts():
    spec = LayerSpec.synthetic("g", 512, 256, 1024)
    tc, stc = simulate_specs([spec], get_arch("sl-tc")), simulate_specs([spec], get_arch("sl-stc"))
    assert tc.cycles == stc.cycles
    a, b = tc.layers[0], stc.layers[0]
    assert (a.macs_act, a.smem_read_bytes, a.dram_read_bytes) == (b.macs_act, b.smem_read_bytes, b.dram_read_bytes)


@pytest.mark.parametrize("arch", ["dstc", "sl-dstc"])
def test_dstc_reproduces_the_published_density_speed_ratios_within_15_percent(arch):
    rows = dstc_ratio_calibration(arch, size=1024)
    assert len(rows) == 9
    for row in rows:
        assert abs(row["rel_error"]) <= 0.15, row
    # and it is not flat: sparser operands are faster
    by = {(r["weight_density"], r["activation_density"]): r["latency_ratio"] for r in rows}
    assert by[(0.3, 0.4)] < by[(0.5, 0.4)] < by[(0.7, 0.4)] < by[(1.0, 0.4)]
    assert by[(0.3, 1.0)] < by[(0.5, 1.0)] < by[(0.7, 1.0)] <= by[(0.9, 1.0)]
