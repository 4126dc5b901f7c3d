"""Lower layers to instruction records for one architecture (the tile schedule), each layer by its
architecture's dataflow (:mod:`.lowering_simd`, :mod:`.lowering_outer`)."""

from __future__ import annotations

import numpy as np

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.lowering_outer import lower_outer
from crisp.runtime.simulator.lowering_simd import lower_simd
from crisp.runtime.simulator.records import concat_columns
from crisp.runtime.simulator.workload import LayerSpec


def lower_layers(specs: list[LayerSpec], arch: Arch) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Records of all layers (concatenated, ``seq`` numbered) and the per-layer plan info. Every
    lowering is vectorised over tiles: the Python loop is over layers only."""
    lower = lower_simd if arch.dataflow == "simd" else lower_outer
    parts, infos = [], []
    for i, spec in enumerate(specs):
        cols, info = lower(spec, arch, i)
        parts.append(cols)
        infos.append(info)
    return concat_columns(parts), infos
