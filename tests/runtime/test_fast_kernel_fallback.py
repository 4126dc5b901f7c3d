"""When the fast kernels cannot be used (build failure, unsupported CPU, failed self-check, or
disabled), crisp warns exactly once and runs the reference kernel; it never crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import crisp
from crisp.runtime import fast_kernel
from crisp.runtime.fast_kernel import FastKernelUnavailableWarning
from conftest import max_relative_error


@pytest.fixture
def fresh_verdict():
    fast_kernel._reset_for_tests()
    yield
    fast_kernel._reset_for_tests()  # the next caller re-checks (and finds the kernels again)


def _unavailable_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, FastKernelUnavailableWarning)]


def masked_dense_error(model, compiled, x, y) -> float:
    with torch.no_grad():
        return max_relative_error(y, crisp.apply_masks(model, compiled.masks)(x))


def test_failed_self_check_falls_back_with_one_warning(fresh_verdict, monkeypatch):
    def wrong_results(capability):
        raise RuntimeError("conv self-check failed (stride 1, padding 1, dilation 1)")

    monkeypatch.setattr(fast_kernel, "_self_check", wrong_results)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert fast_kernel.available() is False
        assert fast_kernel.available() is False
    found = _unavailable_warnings(record)
    assert len(found) == 1  # one warning although every ISA path failed its check
    assert "self-check failed" in str(found[0].message) and "reference kernel" in str(found[0].message)


def test_a_failed_path_gives_way_to_the_next(fresh_verdict, monkeypatch):
    """When the best path's build fails its check, the next path the CPU runs takes over, silently."""
    from crisp.runtime import cpu_capability as isa

    paths = isa.supported()
    if len(paths) < 2:
        pytest.skip(f"this CPU runs only {paths}")
    real = fast_kernel._self_check

    def best_fails(capability):
        if capability == paths[0]:
            raise RuntimeError("conv self-check failed")
        real(capability)

    monkeypatch.setattr(fast_kernel, "_self_check", best_fails)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert fast_kernel.available() is True
    assert not _unavailable_warnings(record)
    assert fast_kernel.cpu_capability() == paths[1]
    assert "self-check failed" in fast_kernel.unavailable_reason(paths[0])


def test_forcing_a_path_the_cpu_lacks_warns_and_uses_the_best(monkeypatch):
    from crisp.runtime import cpu_capability as isa

    monkeypatch.setattr(isa, "_warned", set())
    missing = [c for c in isa.CAPABILITIES if c not in isa.supported()]
    forced = missing[0] if missing else "sse9"  # an unknown name is refused the same way
    monkeypatch.setenv(isa.CAPABILITY_ENV, forced)
    with pytest.warns(isa.CpuCapabilityWarning, match=f"{isa.CAPABILITY_ENV}.*{forced}"):
        assert isa.active() == isa.supported()[0]
    for path in isa.supported():
        monkeypatch.setenv(isa.CAPABILITY_ENV, path)
        assert isa.active() == path


def test_disable_variable_forces_the_reference_backend(fresh_verdict, monkeypatch):
    from crisp import models

    monkeypatch.setenv(fast_kernel.DISABLE_ENV, "1")
    model = models.build("small_cnn")
    x = torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        compiled = crisp.compile(model, (x,), target="cpu", sparsity=0.8, block=16, verify=False)
        y = compiled(x)
        fast_kernel.available()
    assert len(_unavailable_warnings(record)) == 1
    assert compiled.artifacts["cpu_kernels"] == "reference"
    assert fast_kernel.DISABLE_ENV in compiled.artifacts["reason"]
    assert compiled.module is compiled.graph_module  # the lowered graph on the reference kernel
    assert masked_dense_error(model, compiled, x, y) < 1e-4


def test_build_failure_in_a_fresh_process(tmp_path):
    """A real failed build (no working C++ compiler, empty cache): one warning, same outputs as
    the reference target, exit status 0."""
    script = textwrap.dedent(
        """
        import copy, json, warnings, torch, crisp
        from crisp import models
        from crisp.runtime.fast_kernel import FastKernelUnavailableWarning
        model = models.build("small_cnn")
        x = torch.randn(2, 1, 8, 8)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            cpu = crisp.compile(model, (x,), target="cpu", sparsity=0.8, block=16, verify=False)
            y = cpu(x)
        masked = copy.deepcopy(model)
        params = dict(masked.named_parameters())
        with torch.no_grad():
            for name, mask in cpu.masks.items():
                params[name].mul_(mask)
            want = masked(x)
        err = float((y - want).abs().max() / want.abs().max())
        found = [str(w.message) for w in record if issubclass(w.category, FastKernelUnavailableWarning)]
        print(json.dumps({"kernels": cpu.artifacts["cpu_kernels"], "warnings": found, "error": err}))
        """
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), CRISP_CACHE_DIR=str(tmp_path / "cache"))
    env.pop(fast_kernel.DISABLE_ENV, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kernels"] == "reference"
    assert len(result["warnings"]) == 1 and "reference kernel" in result["warnings"][0]
    assert result["error"] < 1e-4


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    """A build killed mid-way leaves torch's lock file behind; the next build must not wait on it forever."""
    import os
    import time

    from crisp.runtime import fast_kernel

    lock = tmp_path / "lock"
    lock.touch()
    fast_kernel._clear_stale_build_lock(tmp_path)
    assert lock.exists()  # a build may be running right now
    old = time.time() - fast_kernel.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="stale kernel build lock"):
        fast_kernel._clear_stale_build_lock(tmp_path)
    assert not lock.exists()
