"""compiled.save / crisp.load: bit-identical round trips per target, in another process, and a
FormatError naming the file for every file that is not an intact crisp model."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

import crisp


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def _model():
    torch.manual_seed(0)
    m = _Net()
    crisp.models.randomize_batchnorm(m)
    return m.eval()


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{target: (compiled, path)} for reference, cpu and crisp-stc."""
    out = {}
    for target in ("reference", "cpu", "crisp-stc"):
        c = crisp.compile(_model(), (X,), target=target, pattern="2:4", block=16, sparsity=0.8)
        path = tmp_path_factory.mktemp(target) / "net.crisp"
        c.save(path)
        out[target] = (c, path)
    return out


@pytest.mark.parametrize("target", ["reference", "cpu", "crisp-stc"])
def test_round_trip_is_bit_identical(saved, target):
    compiled, path = saved[target]
    loaded = crisp.load(path)
    assert loaded.target == target
    for x in (X, torch.randn(5, 3, 12, 12)):  # the batch dimension stays dynamic
        assert torch.equal(loaded(x), compiled(x))
    assert loaded.masks.keys() == compiled.masks.keys() and len(loaded.masks) == 3
    for name, mask in compiled.masks.items():
        assert torch.equal(loaded.masks[name], mask)
    assert str(loaded.report) == str(compiled.report)
    assert loaded.report.achieved_sparsity == compiled.report.achieved_sparsity
    reference = crisp.apply_masks(_model(), compiled.masks)
    with torch.no_grad():
        assert torch.allclose(loaded(X), reference(X), rtol=1e-4, atol=1e-5)


def test_a_batch_of_one_still_loads_with_any_batch(tmp_path):
    c = crisp.compile(_model(), (X[:1],), target="reference", pattern="2:4", block=16, sparsity=0.8)
    c.save(tmp_path / "one.crisp")
    x = torch.randn(3, 3, 12, 12)
    assert torch.equal(crisp.load(tmp_path / "one.crisp")(x), c(x))


@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("arg, words", [
    (X.double(), "float64"),
    (torch.randn(2, 4, 12, 12), "shape [2, 4, 12, 12]"),
    (torch.randn(3, 12, 12), "shape [3, 12, 12]"),
    ([X], "must be a torch.Tensor"),
])
def test_loaded_model_guards_its_calls_like_the_compiled_one(saved, target, arg, words):
    loaded = crisp.load(saved[target][1])
    with pytest.raises(crisp.ModelError, match="input 0") as exc:
        loaded(arg)
    assert words in str(exc.value)


def test_a_corrupt_input_record_is_a_format_error(saved, tmp_path):
    src = saved["reference"][1]
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["crisp.json"])
    meta["inputs"] = [[[2, 3, 12, 12], "os.system"]]
    members["crisp.json"] = json.dumps(meta).encode()
    bad = tmp_path / "bad.crisp"
    with zipfile.ZipFile(bad, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    with pytest.raises(crisp.FormatError, match="bad.crisp.*input record"):
        crisp.load(bad)


def test_loaded_model_exports_onnx_and_simulates(saved, tmp_path):
    import onnxruntime as ort

    compiled, path = saved["crisp-stc"]
    loaded = crisp.load(path)
    model = loaded.to_onnx(tmp_path / "net.onnx")
    assert (tmp_path / "net.onnx").is_file() and any(n.domain == "crisp" for n in model.graph.node)
    sess = ort.InferenceSession(str(tmp_path / "net.onnx"))
    (y,) = sess.run(None, {sess.get_inputs()[0].name: X.numpy()})
    assert torch.allclose(torch.from_numpy(y), compiled(X), rtol=1e-4, atol=1e-5)
    assert loaded.simulate("crisp-stc").cycles == compiled.simulate("crisp-stc").cycles > 0


def test_cpu_file_holds_the_fast_kernel_graph(saved):
    compiled, path = saved["cpu"]
    names = zipfile.ZipFile(path).namelist()
    assert "reference.pt2" in names
    if compiled.artifacts.get("cpu_kernels") == "fast":
        assert "cpu.pt2" in names
        ops = {str(n.target) for n in crisp.load(path).module.graph.nodes if n.op == "call_function"}
        assert any("fast" in o or "nhwc" in o for o in ops), ops


def test_loads_in_a_process_without_the_source(saved, tmp_path):
    compiled, path = saved["cpu"]
    torch.save({"x": X, "y": compiled(X)}, tmp_path / "io.pt")
    code = (
        "import sys, torch, crisp\n"
        "assert not any('tests' in p for p in sys.path), sys.path\n"
        f"m = crisp.load({str(path)!r})\n"
        f"d = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)\n"
        "assert torch.equal(m(d['x']), d['y'])\n"
        "print('ok', len(m.masks))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path.parent)} | _cache_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok 3" in out.stdout


def _cache_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith(("CRISP_", "TORCH_"))} | {
        "CRISP_CACHE_DIR": os.environ.get("CRISP_CACHE_DIR", os.path.expanduser("~/.cache/crisp"))}


def test_pickle_and_torch_save_point_to_save(saved):
    compiled, _ = saved["reference"]
    for dump in (pickle.dumps, lambda c: torch.save(c, io.BytesIO())):
        with pytest.raises(crisp.CrispError, match=r"compiled\.save"):
            dump(compiled)


# ------------------------------------------------------------------------------------ bad files
def _rewrite(src, dst, edit):
    """Copy the zip ``src`` to ``dst`` with ``edit(members) -> members`` applied."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members = edit(members)
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return dst


def _with_meta(members, **changes):
    meta = json.loads(members["crisp.json"])
    meta.update(changes)
    members["crisp.json"] = json.dumps(meta).encode()
    return members


def _bad_files(path, tmp_path):
    data = path.read_bytes()
    yield "truncated", _write(tmp_path / "truncated.crisp", data[: len(data) // 2]), "truncated or corrupted"
    flipped = bytearray(data)
    start = data.find(b"tensors.pt") + 200  # inside a stored member, past its local header
    flipped[start:start + 8] = b"\x00\xff" * 4
    yield "corrupted", _write(tmp_path / "flipped.crisp", bytes(flipped)), "corrupt"
    yield "foreign bytes", _write(tmp_path / "foreign.crisp", b"hello, not a model" * 10), "not a readable crisp"
    yield "foreign zip", _rewrite(path, tmp_path / "zip.crisp", lambda m: {"a.txt": b"x"}), "not a crisp model file"
    ep = torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),))
    torch.export.save(ep, tmp_path / "prog.pt2")
    yield "torch.export file", tmp_path / "prog.pt2", "torch.export"
    yield "future version", _rewrite(path, tmp_path / "future.crisp", lambda m: _with_meta(m, format_version=99)), \
        "upgrade crisp"
    yield "missing", tmp_path / "nope.crisp", "does not exist"


def _write(p, data):
    p.write_bytes(data)
    return p


def test_every_bad_file_raises_format_error_naming_it(saved, tmp_path):
    _, path = saved["reference"]
    seen = []
    for what, bad, words in _bad_files(path, tmp_path):
        with pytest.raises(crisp.FormatError) as info:
            crisp.load(bad)
        assert str(bad) in str(info.value), what
        assert words in str(info.value), (what, str(info.value))
        seen.append(what)
    assert len(seen) == 7


def test_a_pickle_with_code_is_refused_and_never_runs(saved, tmp_path):
    import hashlib

    _, path = saved["reference"]
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    def edit(members):
        members["tensors.pt"] = pickle.dumps(Evil())
        buf = io.BytesIO()
        torch.save({"x": Evil()}, buf)
        members["tensors.pt"] = buf.getvalue()
        return _with_meta(members, sha256={n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "crisp.json"})

    bad = _rewrite(path, tmp_path / "evil.crisp", edit)
    with pytest.raises(crisp.FormatError, match="never loads pickled code"):
        crisp.load(bad)
    assert not marker.exists()
