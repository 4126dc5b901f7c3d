"""The crisp-stc trace: file round trip, bad files, re-lowering, the backend and the CLI."""

from __future__ import annotations

import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch

import crisp
from crisp.backends import get_backend, registered_backends
from crisp.backends.stc_trace import MAGIC, Trace, trace_from_layers
from crisp.sparsity.pattern import Pattern
from crisp.runtime.simulator import TraceFormatError, get_arch
from crisp.runtime.simulator.records import COLUMNS
from crisp.runtime.simulator.synthetic import dense_layer, random_layers
from crisp.simulate_api import simulate


@pytest.fixture(scope="module")
def layers():
    return random_layers(Pattern(2, 4, 16), 0.85, batch=2, seed=7) + [dense_layer("head", 10, 100, 1, batch=2)]


@pytest.fixture(scope="module")
def trace(layers):
    return trace_from_layers(layers, "crisp-stc", pattern="2:4")


def test_header_describes_the_trace(trace, layers):
    h = trace.header
    assert h["schema"] == "crisp-stc-trace" and h["version"] == "1.0" and h["crisp_version"]
    assert h["arch"]["name"] == "crisp-stc" and h["pattern"]["n"] == 2 and h["pattern"]["m"] == 4
    assert h["pattern"]["blk"] == 16 and h["pattern"]["offset_bits"] == 2
    assert [l["name"] for l in h["layers"]] == [l.name for l in layers]
    assert h["layers"][-1]["plan"]["execution"] == "dense layer"
    assert h["totals"]["max_end"] == h["totals"]["cycles"]


def test_save_load_round_trip(tmp_path, trace):
    size = trace.save(tmp_path / "t.trc")
    back = Trace.load(tmp_path / "t.trc")
    assert size == (tmp_path / "t.trc").stat().st_size
    assert back.header == trace.header
    for name in COLUMNS:
        assert np.array_equal(back.columns[name], trace.columns[name]), name
    assert back.verify()["cycles"] == trace.totals["cycles"]
    assert simulate(back).to_dict() == simulate(trace).to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert simulate(back, "dstc").to_dict() == simulate(trace, "dstc").to_dict()  # re-lowered from the file
    assert simulate(str(tmp_path / "t.trc"), "crisp-stc").cycles == trace.totals["cycles"]


def test_replay_on_other_arch_matches_direct_simulation(trace, layers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("nvidia-stc", "dstc", "tc"):
            assert simulate(trace, name).to_dict() == simulate(layers, name).to_dict()
    # bandwidth-only changes replay the same records
    half = get_arch("crisp-stc").with_(name="half", smem_read_bw=2.0)
    assert half.lowering_key() == get_arch("crisp-stc").lowering_key()
    assert simulate(trace, half).cycles >= simulate(trace).cycles


def _rewrite_header(data: bytes, change) -> bytes:
    """A well-formed file whose header says something else (another version, schema ...)."""
    hlen, _ = struct.unpack("<QI", data[8:20])
    header = json.loads(data[20:20 + hlen])
    change(header)
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<QI", len(head), zlib.crc32(head)) + head + data[20 + hlen:]


@pytest.mark.parametrize("damage,needle", [
    (lambda d: b"NOTATRACE" + d[9:], "bad magic"),
    (lambda d: d[:12], "truncated"),
    (lambda d: d[:-7], "truncated"),
    (lambda d: d[:-40] + bytes(b ^ 0xFF for b in d[-40:-20]) + d[-20:], "checksum"),
    (lambda d: d[:20] + b"[" + d[21:], "corrupt header"),
    (lambda d: _rewrite_header(d, lambda h: h.update(version="2.0")), "version '2.0'"),
    (lambda d: _rewrite_header(d, lambda h: h.update(schema="other")), "schema 'other'"),
])
def test_bad_trace_files_are_refused(tmp_path, trace, damage, needle):
    good = tmp_path / "good.trc"
    trace.save(good)
    bad = tmp_path / "bad.trc"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(TraceFormatError) as exc:
        Trace.load(bad)
    assert needle in str(exc.value)
    with pytest.raises(TraceFormatError):
        simulate(str(bad))


def test_pattern_label_must_match_the_layers(layers):
    with pytest.raises(crisp.CrispError, match="not the trace's pattern"):
        trace_from_layers(layers, "crisp-stc", pattern="1:4")


def test_backend_returns_the_graph_module_and_a_trace():
    assert "crisp-stc" in registered_backends() and get_backend("crisp-stc")
    model = crisp.models.build("small_cnn")
    x = torch.randn(2, 1, 8, 8)
    compiled = crisp.compile(model, (x,), target="crisp-stc", pattern="2:4", block=8, sparsity=0.8)
    assert compiled.module is compiled.graph_module
    trace = compiled.artifacts["trace"]
    assert isinstance(trace, Trace) and trace.layer_names == [l.name for l in compiled.layers]
    torch.testing.assert_close(compiled(x), compiled.graph_module(x))
    res = simulate(compiled)
    assert res.cycles == trace.totals["cycles"]
    pruned = [l for l in compiled.layers if l.compact is not None]
    assert pruned and all(res.layer(l.name).macs_act == l.macs_kept * 2 for l in pruned)


def test_cli_simulate_writes_csv_plot_and_trace(tmp_path, capsys):
    from crisp.cli import main

    out = tmp_path / "o.csv"
    rc = main(["simulate", "--model", "small_cnn", "--block", "8", "--sparsity", "0.8", "--fast",
               "--csv", str(out), "--plot", str(tmp_path / "o.png"), "--save-trace", str(tmp_path / "o.trc")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "speedup over tc" in text and "crisp-stc" in text
    rows = out.read_text().splitlines()
    assert rows[0].startswith("arch,layer") and len(rows) == 1 + 4 * 6
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    assert Trace.load(tmp_path / "o.trc").header["design"] == "crisp-stc"
    assert main(["simulate", "--trace", str(tmp_path / "o.trc"), "--arch", "crisp-stc,warp-drive"]) == 1
    assert "presets: crisp-stc" in capsys.readouterr().err
