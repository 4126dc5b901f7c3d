"""crisp.runtime.dense_path: torch's conv with the fused epilogue, equal to the plain ops, and safe on
the geometry where torch 2.13's channels-last conv crashes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from crisp.runtime import dense_path


@pytest.mark.parametrize("width, padding, dilation, stride", [(1, 1, 2, 2), (1, 2, 2, 3), (5, 1, 2, 1), (1, 2, 1, 3)])
def test_dense_conv_equals_torch_on_unit_kernel_axes_with_dilation(width, padding, dilation, stride):
    """Run in a child process: on the first two geometries torch's own channels-last conv kills the
    process with SIGSEGV; crisp's dense path must compute them (dilation is irrelevant on a size-1 axis)."""
    code = f"""
import torch, torch.nn.functional as F
from crisp.runtime import dense_path
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 5, 14, {width}, generator=g)
w, b, r = torch.randn(10, 5, 3, 1, generator=g), torch.randn(10, generator=g), None
args = ((1, {stride}), (1, {padding}), (1, {dilation}))
got = dense_path.conv2d(x, w, b, r, *map(list, args), 0.0, float("inf"))
want = torch.relu(F.conv2d(x.contiguous(), w, b, *args))
assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])


def test_outputs_that_see_only_padding_are_found():
    assert dense_path.reads_only_padding((14, 1), (3, 1), (1, 3), (1, 2), (1, 1))  # width: taps at 0 and 3, input at 2
    assert dense_path.reads_only_padding((1, 1), (125, 1), (2, 2), (63, 63), (1, 1))  # pytorch/pytorch#195394's shape
    assert not dense_path.reads_only_padding((56, 56), (3, 3), (1, 1), (1, 1), (1, 1))  # a ResNet 3x3
    assert not dense_path.reads_only_padding((7, 7), (1, 1), (2, 2), (0, 0), (1, 1))  # a strided 1x1


def test_unit_dilation_keeps_dilation_on_real_kernel_axes():
    assert dense_path.unit_dilation_where_kernel_is_one((3, 1), [2, 2]) == (2, 1)
    assert dense_path.unit_dilation_where_kernel_is_one((1, 1), [3]) == (1, 1)
    assert dense_path.unit_dilation_where_kernel_is_one((3, 3), [2, 1]) == (2, 1)


def test_epilogue_fuses_residual_and_clamp():
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(1, 4, 6, 6, generator=g), torch.randn(8, 4, 3, 3, generator=g), torch.randn(8, generator=g)
    r = torch.randn(1, 8, 4, 4, generator=g)
    got = dense_path.conv2d(x, w, b, r, [1, 1], [0, 0], [1, 1], 0.0, 6.0)
    assert torch.allclose(got, F.relu6(F.conv2d(x, w, b) + r), rtol=1e-5, atol=1e-5)


def test_torch_op_runs_on_one_thread_and_the_thread_count_comes_back():
    """Between crisp's layers torch's op must not start its own OpenMP team (its spinning worker
    starves crisp's pool helper); the caller's thread count is restored, also after an error."""
    seen = []

    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(1, 4, 6, 6, generator=g), torch.randn(8, 4, 1, 1, generator=g), torch.randn(8, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        original = dense_path.F.conv2d
        dense_path.F.conv2d = lambda *a, **k: (seen.append(torch.get_num_threads()), original(*a, **k))[1]
        try:
            got = dense_path.conv2d(x, w, b, None, [1, 1], [0, 0], [1, 1], -float("inf"), float("inf"))
            with pytest.raises(RuntimeError):
                dense_path.conv2d(x[:, :3], w, b, None, [1, 1], [0, 0], [1, 1], 0.0, 6.0)  # 3 channels for a 4-channel weight
        finally:
            dense_path.F.conv2d = original
        assert torch.get_num_threads() == 2
        assert seen[:1] == [1]
        assert torch.allclose(got, F.conv2d(x, w, b), rtol=1e-5, atol=1e-5)
        lin = dense_path.linear(torch.randn(3, 8, generator=g), torch.randn(5, 8, generator=g), None, 0.0, float("inf"))
        assert lin.shape == (3, 5) and bool((lin >= 0).all()) and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
