"""torch.compile(model, backend="crisp", options=...) in a fresh process that never imports crisp
itself: found through the entry point, equal to crisp.compile, each captured graph compiled once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, brk=False):
            super().__init__()
            self.brk = brk
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            if self.brk:
                torch._dynamo.graph_break()
            x = torch.relu(self.conv2(x))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    opts = {"pattern": "2:4", "block": 16, "sparsity": 0.8, "target": "TARGET"}
    m = Net().eval()
    f = torch.compile(m, backend="crisp", options=opts)
    with torch.no_grad():
        ys = [f(x) for _ in range(3)]
    assert "crisp" in sys.modules  # loaded by torch through the entry point, not by this script

    import crisp
    from crisp.dynamo_backend import COMPILED_GRAPHS
    assert len(COMPILED_GRAPHS) == 1, len(COMPILED_GRAPHS)
    c = crisp.compile(m, (x,), **opts)
    want = c(x)
    err = ((ys[0] - want).abs().max() / want.abs().max()).item()
    assert err <= 1e-4, err
    assert all(torch.equal(y, ys[0]) for y in ys)
    got = COMPILED_GRAPHS[0].masks
    assert sorted(got) == sorted(c.masks) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert all(torch.equal(got[k], c.masks[k]) for k in c.masks)
    dense = m(x)
    assert ((ys[0] - dense).abs().max() / dense.abs().max()).item() > 1e-3  # it really pruned

    with torch.no_grad():  # weights are copied at compile time ...
        m.fc.weight.mul_(2)
        assert torch.equal(f(x), ys[0])
        torch.compiler.reset()  # ... and a reset recompiles with the new ones
        assert not torch.equal(f(x), ys[0])
    assert len(COMPILED_GRAPHS) == 2

    torch.compiler.reset()
    g = torch.compile(Net(brk=True).eval(), backend="crisp", options=opts)
    with torch.no_grad():
        for _ in range(3):
            g(x)
    assert len(COMPILED_GRAPHS) == 4, len(COMPILED_GRAPHS)  # a graph break: two graphs, each compiled once
    print("ok", err)
""")


def test_entry_point_is_registered():
    names = [ep.name for ep in entry_points(group="torch_dynamo_backends")]
    assert "crisp" in names, "reinstall crisp: pip install -e . --no-deps"


def _run(target: str):
    out = subprocess.run([sys.executable, "-c", SCRIPT.replace("TARGET", target)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "ok" in out.stdout


def test_torch_compile_equals_crisp_compile_cpu():
    _run("cpu")


def test_torch_compile_equals_crisp_compile_reference():
    _run("reference")
