"""Architecture files and instruction traces: every number finite and in a sane range (the message
names the field and the file), non-UTF-8 text refused, a crafted trace header never allocates."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch
from torch import nn

import crisp
from crisp.backends.stc_trace import Trace
from crisp.cli import main
from crisp.runtime.simulator.arch_io import load_arch
from crisp.runtime.simulator.errors import ArchError, TraceFormatError


@pytest.mark.parametrize("body, field", [
    ('[energy]\ndram_per_byte = nan\n', "energy.dram_per_byte"),
    ('[energy]\ndram_per_byte = inf\n', "energy.dram_per_byte"),
    ('[energy]\nsmem_row_bytes = nan\n', "energy.smem_row_bytes"),
    ('[energy]\nmac = 1e300\n', "energy.mac"),
    ('n_cores = 9223372036854775807\n', "n_cores"),
    ('smem_read_bw = 1e-300\n', "smem_read_bw"),
    ('smem_read_bw = nan\n', "smem_read_bw"),
    ('clock_ghz = inf\n', "clock_ghz"),
    ('name = ["a"]\n', "name"),
    ('description = 3\n', "description"),
    ('patterns = [2]\n', "patterns"),
])
def test_bad_numbers_and_names(tmp_path, body, field):
    f = tmp_path / "a.toml"
    f.write_text('base = "crisp-stc"\n' + body)
    with pytest.raises(ArchError) as exc:
        load_arch(f)
    assert field in str(exc.value) and "a.toml" in str(exc.value)


def test_base_must_be_a_name(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"base": ["tc"]}))
    with pytest.raises(ArchError, match="not a preset"):
        load_arch(f)


def test_latin1_file(tmp_path):
    f = tmp_path / "a.toml"
    f.write_bytes('base = "crisp-stc"\nname = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ArchError, match="UTF-8"):
        load_arch(f)


def test_arch_object_validates_too():
    arch = crisp.runtime.simulator.get_arch("tc")
    with pytest.raises(ArchError, match="smem_read_bw"):
        arch.with_(smem_read_bw=float("nan"))
    with pytest.raises(ArchError, match="energy.dram_per_byte"):
        arch.with_(energy={"dram_per_byte": float("inf")})


def test_cli_simulate_with_nan_energy_fails_clearly(tmp_path, capsys):
    f = tmp_path / "a.toml"
    f.write_text('base = "crisp-stc"\n[energy]\ndram_per_byte = nan\n')
    code = main(["simulate", "--model", "small_cnn", "--arch", str(f)])
    assert code != 0 and "dram_per_byte" in capsys.readouterr().err


def _trace_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 16, 32))
    c = crisp.compile(model, (torch.randn(1, 32, 4, 4),), target="crisp-stc", block=32, sparsity=0.6)
    path = tmp_path / "t.trc"
    c.artifacts["trace"].save(path)
    return path


def _rewrite_header(path, change):
    data = path.read_bytes()
    hlen, _ = struct.unpack("<QI", data[8:20])
    header = json.loads(data[20:20 + hlen])
    change(header)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    path.write_bytes(data[:8] + struct.pack("<QI", len(head), zlib.crc32(head)) + head + data[20 + hlen:])


@pytest.mark.parametrize("change, words", [
    (lambda h: h["layers"][0]["spec"].__setitem__("N", 10**15), "N"),
    (lambda h: h["layers"][0]["spec"].__setitem__("M", float("nan")), "M"),
    (lambda h: h["blobs"][0].__setitem__("count", 10**15), "count"),
])
def test_crafted_trace_header(tmp_path, change, words):
    path = _trace_file(tmp_path)
    assert Trace.load(path).specs  # the untouched file loads
    _rewrite_header(path, change)
    with pytest.raises(TraceFormatError, match=words):
        crisp.simulate(str(path), "crisp-stc")
