"""ResNet-50 at 90% sparsity (2:4, block 64) against the paper's Fig. 8 ranges.

The in-project ResNet-50 has random weights, so this uses per-layer selection (every layer
near 90%, as in a trained network; see crisp.bench.model_workloads). The global
selection on random weights gives some layers 99% and others 50%; benchmarks/results/simulator.md
reports both and says where the paper and the model part ways.
"""

from __future__ import annotations

import warnings

import pytest

from crisp.bench.model_workloads import model_specs
from crisp.simulate_api import compare_archs


@pytest.fixture(scope="module")
def comparison():
    specs = model_specs("resnet50", pattern="2:4", block=64, sparsity=0.9, distribution="per-layer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare_archs(specs, ("crisp-stc", "nvidia-stc", "dstc", "tc"))


def test_crisp_stc_speedup_is_in_the_papers_2_4_range_on_most_layers(comparison):
    speedups = comparison.speedup("crisp-stc")
    assert len(speedups) == 54
    inside = [s for s in speedups if 5.0 <= s <= 12.0]
    assert len(inside) >= 0.75 * len(speedups), sorted(speedups)
    # the layers outside are those whose K is one block (64): 2:4 alone, 2x
    res = comparison.results["crisp-stc"]
    for layer, s in zip(res.layers, speedups):
        if not 5.0 <= s <= 12.0:
            assert layer.K <= 3 * 64 and s < 5.0, (layer.name, layer.K, s)
    assert 5.0 <= comparison.total_speedup("crisp-stc") <= 12.0


def test_nvidia_stc_never_exceeds_2x_and_crisp_beats_every_baseline(comparison):
    assert max(comparison.speedup("nvidia-stc")) <= 2.0 + 1e-9
    assert max(comparison.energy_efficiency("nvidia-stc")) <= 2.0 + 1e-9
    for name in ("nvidia-stc", "dstc", "tc"):
        assert comparison.total_speedup("crisp-stc") > comparison.total_speedup(name)
        assert comparison.total_energy_efficiency("crisp-stc") > comparison.total_energy_efficiency(name)
