"""Architectures as data: presets, files, validation errors, and patterns an arch cannot run."""

from __future__ import annotations

import json
import warnings

import pytest

from crisp.errors import CrispError
from crisp.sparsity.pattern import Pattern
from crisp.runtime.simulator import (
    PRESETS, Arch, ArchError, PatternFallbackWarning, UnsupportedPatternError, get_arch, load_arch, save_arch,
)
from crisp.runtime.simulator.synthetic import random_layers
from crisp.simulate_api import compare_archs, simulate


def test_presets_share_crisp_stc_hardware():
    names = ("crisp-stc", "nvidia-stc", "dstc", "tc")
    for name in names:
        a = get_arch(name)
        assert (a.n_cores, a.macs_per_core, a.rf_bytes, a.smem_bytes) == (4, 64, 1024, 256 * 1024)
    assert get_arch("crisp-stc").patterns == ("1:4", "2:4", "3:4") and get_arch("crisp-stc").block_skipping
    assert get_arch("nvidia-stc").patterns == ("2:4",) and not get_arch("nvidia-stc").block_skipping
    assert get_arch("dstc").activation_density == 0.6


def test_unknown_arch_lists_the_presets():
    with pytest.raises(ArchError) as exc:
        get_arch("crisp-tsc")
    for name in PRESETS:
        assert name in str(exc.value)
    assert isinstance(exc.value, CrispError)


def test_toml_file_with_base_overrides_fields(tmp_path):
    f = tmp_path / "half.toml"
    f.write_text('base = "crisp-stc"\nname = "half-bw"\nsmem_read_bw = 21\n[energy]\ndram_per_byte = 40.0\n')
    a = load_arch(f)
    assert a.name == "half-bw" and a.smem_read_bw == 21.0 and a.energy.dram_per_byte == 40.0
    assert a.patterns == get_arch("crisp-stc").patterns and a.energy.mac == get_arch("crisp-stc").energy.mac
    # the file path works wherever an arch name does
    layers = random_layers(Pattern(1, 4, 16), 0.9, seed=1)
    slow, fast = simulate(layers, str(f)), simulate(layers, "crisp-stc")
    assert slow.cycles >= fast.cycles


def test_json_round_trip(tmp_path):
    a = get_arch("dstc").with_(activation_density=0.4, name="dstc-04")
    save_arch(a, tmp_path / "a.json")
    assert load_arch(tmp_path / "a.json") == a


@pytest.mark.parametrize("content,needle", [
    ({"name": "x", "dataflow": "simd"}, "missing required field(s) n_cores"),
    ({"base": "tc", "smem_read_bw": -4}, "smem_read_bw must be positive"),
    ({"base": "tc", "n_cores": 0}, "n_cores must be positive"),
    ({"base": "tc", "n_cores": 2.5}, "n_cores must be an integer"),
    ({"base": "tc", "smem_red_bw": 4}, "did you mean 'smem_read_bw'"),
    ({"base": "nope"}, "not a preset"),
    ({"base": "tc", "dataflow": "systolic"}, "dataflow must be one of"),
    ({"base": "tc", "patterns": ["2:4", "5:4"]}, "needs 1 <= n <= m"),
    ({"base": "tc", "core_rows": 64, "patterns": ["2:4"]}, "needs 2 lanes per row"),
    ({"base": "tc", "energy": {"mac": -1}}, "energy.mac must be a non-negative number"),
    ({"base": "dstc", "macs_per_core": 48}, "not a square"),
])
def test_bad_arch_files_say_what_is_wrong(tmp_path, content, needle):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(content))
    with pytest.raises(ArchError) as exc:
        load_arch(f)
    assert needle in str(exc.value)
    assert "bad.json" in str(exc.value)


def test_unreadable_arch_files(tmp_path):
    with pytest.raises(ArchError, match="does not exist"):
        load_arch(tmp_path / "missing.toml")
    (tmp_path / "x.toml").write_text("base = \n")
    with pytest.raises(ArchError, match="not valid TOML"):
        load_arch(tmp_path / "x.toml")
    (tmp_path / "x.yaml").write_text("a: 1\n")
    with pytest.raises(ArchError, match=r"\.toml or \.json"):
        load_arch(tmp_path / "x.yaml")


def test_dataclass_validation():
    with pytest.raises(ArchError, match="rf_bytes must be a positive integer"):
        Arch(name="x", dataflow="simd", n_cores=1, macs_per_core=16, rf_bytes=-1, smem_bytes=1024,
             smem_read_bw=1, smem_write_bw=1, dram_read_bw=1, dram_write_bw=1)


def test_pattern_the_arch_cannot_run_falls_back_with_an_explanation():
    layers = random_layers(Pattern(3, 4, 16), 0.85, seed=4)
    with pytest.raises(UnsupportedPatternError) as exc:
        simulate(layers, "nvidia-stc", strict=True)
    msg = str(exc.value)
    assert "3:4" in msg and "runs dense" in msg and "2:4" in msg
    with pytest.warns(PatternFallbackWarning, match="runs dense"):
        res = simulate(layers, "nvidia-stc")
    tc = simulate(layers, "tc")
    assert [l.macs_act for l in res.layers] == [l.macs_act for l in tc.layers]
    assert all("run dense" in l.execution for l in res.layers)
    # 1:4 on NVIDIA-STC runs as 2:4 with explicit zeros, and says so
    layers14 = random_layers(Pattern(1, 4, 16), 0.9, seed=4)
    with pytest.warns(PatternFallbackWarning, match="stored as 2:4"):
        res14 = simulate(layers14, "nvidia-stc")
    assert all("run as 2:4" in l.execution for l in res14.layers)
    # CRISP-STC runs 3:4 natively: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        simulate(layers, "crisp-stc")


def test_custom_arch_without_the_pattern_runs_denser_inside_kept_blocks():
    only24 = get_arch("crisp-stc").with_(name="crisp-24", patterns=("2:4",))
    layers = random_layers(Pattern(1, 4, 16), 0.9, seed=6)
    with pytest.warns(PatternFallbackWarning):
        res = simulate(layers, only24)
    native = simulate(layers, "crisp-stc")
    for a, b, info in zip(res.layers, native.layers, layers):
        assert a.macs_act >= b.macs_act
        assert "1:4 run as 2:4" in a.execution


def test_compare_needs_distinct_names():
    layers = random_layers(Pattern(2, 4, 16), 0.8, seed=1)
    with pytest.raises(ArchError, match="distinct names"):
        compare_archs(layers, ["tc", get_arch("crisp-stc").with_(name="tc")])
