"""crisp: compile convolutional networks to hybrid N:M + block sparsity (CRISP).

The front door: :func:`compile` traces a model with torch.fx, runs the default pass pipeline
(find prunable layers -> saliency -> select masks -> fold BatchNorm -> lower -> verify) and
hands the lowered graph to a backend chosen by ``target``.
"""

from . import models
from .api import compile
from .compiled_model import CompiledModel
from .errors import (
    CrispError, FormatError, ModelError, PassOrderError, PatternError, TraceError, UnknownTargetError,
    VerificationError,
)
from .format import HybridSparseTensor
from .layer_info import LayerInfo
from .head import to_original_classes
from .masking import apply_masks
from .prune_api import prune
from .prune_loop import PruneHistory, StepRecord
from .saliency import magnitude_saliency, taylor_saliency
from .stability import StabilityCertificate, stability_certificate
from .user_classes import user_classes
from .onnx_optimize import AlreadyOptimizedError, optimize_onnx, optimize_onnx_with_report
from .pattern import Pattern
from .pipeline import PIPELINES, Pipeline, default_pipeline
from .report import Report
from .selection import select_hybrid_masks
from .simulate_api import compare_archs, simulate

__version__ = "0.1.0"

__all__ = [
    "PruneHistory", "StabilityCertificate", "StepRecord", "magnitude_saliency", "prune", "stability_certificate",
    "taylor_saliency", "to_original_classes", "user_classes",
    "AlreadyOptimizedError", "optimize_onnx", "optimize_onnx_with_report",
    "CompiledModel", "CrispError", "FormatError", "HybridSparseTensor", "LayerInfo", "ModelError", "PIPELINES",
    "PassOrderError", "Pattern", "PatternError", "Pipeline", "Report", "TraceError", "UnknownTargetError",
    "VerificationError", "apply_masks", "compare_archs", "compile", "default_pipeline", "models", "select_hybrid_masks",
    "simulate",
]
