"""The named architectures.

User-facing presets share one piece of hardware, the paper's CRISP-STC (Sec. III-E): 4 tensor
cores x 64 MACs, a 1 KB accumulator RF per core, 256 KB SMEM, so that speedups and energy
ratios compare designs on equal resources. The paper gives no SMEM bandwidth ("a fraction of
an STC GPU's"); the default is the 42 B/cycle of Sparseloop's STC model, which has 4x the MACs,
so per MAC it is a quarter. Pass ``arch.with_(smem_read_bw=...)`` to explore it.

- ``tc``: dense tensor core.
- ``nvidia-stc``: 2:4 only. 1:4 runs as 2:4 with explicit zeros, 3:4 runs dense, blocks ignored.
- ``dstc``: dual-side sparse tensor core (outer product), activation density 0.6 by default
  (the paper: activation sparsity "to 40%").
- ``crisp-stc``: 1:4 / 2:4 / 3:4 inside kept blocks, pruned blocks and their activations skipped.

The ``sl-*`` presets reproduce Sparseloop's MICRO-2022 STC case study (1024 MACs) and are what
the calibration tests run.
"""

from __future__ import annotations

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.energy import DSTC_45NM, STC_45NM, TC_45NM
from crisp.runtime.simulator.errors import ArchError

_CRISP_HW = dict(
    n_cores=4,
    macs_per_core=64,
    rf_bytes=1024,
    smem_bytes=256 * 1024,
    smem_read_bw=42.0,
    smem_write_bw=42.0,
    dram_read_bw=32.0,
    dram_write_bw=32.0,
    core_rows=16,
)
_SPARSELOOP_HW = {**_CRISP_HW, "macs_per_core": 256, "rf_bytes": 2048}  # the case study's 1024 MACs

PRESETS: dict[str, Arch] = {
    "crisp-stc": Arch(
        name="crisp-stc", dataflow="simd", patterns=("1:4", "2:4", "3:4"), block_skipping=True,
        energy=STC_45NM, description="CRISP-STC (paper Sec. III-E): n:4 inside kept blocks, block skipping",
        **_CRISP_HW,
    ),
    "nvidia-stc": Arch(
        name="nvidia-stc", dataflow="simd", patterns=("2:4",), energy=STC_45NM,
        description="NVIDIA sparse tensor core on CRISP-STC's resources: 2:4 only", **_CRISP_HW,
    ),
    "dstc": Arch(
        name="dstc", dataflow="outer-product", activation_density=0.6, gather_lanes=4, energy=DSTC_45NM,
        description="dual-side sparse tensor core (outer product) on CRISP-STC's resources", **_CRISP_HW,
    ),
    "tc": Arch(
        name="tc", dataflow="simd", energy=STC_45NM,
        description="dense tensor core on CRISP-STC's resources (STC-family energy table)", **_CRISP_HW,
    ),
    # --- Sparseloop MICRO-2022 fig. 15 calibration targets (1024 MACs) ---
    "sl-tc": Arch(
        name="sl-tc", dataflow="simd", energy=TC_45NM, description="Sparseloop fig. 15 TC",
        **{**_SPARSELOOP_HW, "dram_write_bw": 16.0},
    ),
    "sl-stc": Arch(
        name="sl-stc", dataflow="simd", patterns=("2:4",), energy=STC_45NM,
        description="Sparseloop fig. 15 STC", **_SPARSELOOP_HW,
    ),
    "sl-stc-flexible": Arch(
        name="sl-stc-flexible", dataflow="simd", patterns=("2:4", "2:6", "2:8"), energy=STC_45NM,
        description="Sparseloop fig. 15 STC_flexible (CP metadata)", **_SPARSELOOP_HW,
    ),
    "sl-dstc": Arch(
        name="sl-dstc", dataflow="outer-product", activation_density=1.0, gather_lanes=4, energy=DSTC_45NM,
        description="Sparseloop fig. 15 DSTC", **_SPARSELOOP_HW,
    ),
}

DEFAULT_COMPARISON = ("crisp-stc", "nvidia-stc", "dstc", "tc")


def preset_names() -> list[str]:
    return list(PRESETS)
