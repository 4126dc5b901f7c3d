"""crisp.runtime.simulator: replays instruction traces on accelerator models (CRISP-STC, NVIDIA-STC, DSTC, TC).

An architecture is data (:class:`Arch`, presets in :data:`PRESETS`, TOML/JSON files via
:func:`load_arch`). Layers become :class:`LayerSpec` objects, are lowered to instruction
records for one architecture (:mod:`.lowering`), and replayed on it (:mod:`.replay`) for cycles,
bounds and energy (:mod:`.energy`). The trace file format lives in ``crisp.backends.stc_trace``
and the public entry point is ``crisp.simulate``.
"""

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.arch_io import arch_from_dict, load_arch, save_arch
from crisp.runtime.simulator.energy import COMPONENTS, ENERGY_TABLES, EnergyTable
from crisp.runtime.simulator.engine import simulate_specs
from crisp.runtime.simulator.errors import ArchError, PatternFallbackWarning, SimulationInputError, TraceFormatError, UnsupportedPatternError
from crisp.runtime.simulator.arch_io import get_arch
from crisp.runtime.simulator.presets import DEFAULT_COMPARISON, PRESETS, preset_names
from crisp.runtime.simulator.result import Comparison, LayerResult, SimulationResult
from crisp.runtime.simulator.workload import LayerSpec, specs_from_layers

__all__ = [
    "Arch", "ArchError", "COMPONENTS", "Comparison", "DEFAULT_COMPARISON", "ENERGY_TABLES", "EnergyTable",
    "LayerResult", "LayerSpec", "PRESETS", "PatternFallbackWarning", "SimulationInputError", "SimulationResult",
    "TraceFormatError", "UnsupportedPatternError", "arch_from_dict", "get_arch", "load_arch", "preset_names",
    "save_arch", "simulate_specs", "specs_from_layers",
]
