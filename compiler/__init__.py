"""crisp: compile convolutional networks to hybrid N:M + block sparsity (CRISP).

The front door: :func:`compile` traces a model with torch.fx, runs the default pass pipeline
(find prunable layers -> saliency -> select masks -> fold BatchNorm -> lower -> verify) and
hands the lowered graph to a backend chosen by ``target``.
"""

from crisp import models
from crisp.api import compile
from crisp.compiled_model import CompiledModel, load
from crisp.errors import (
    ArgumentError, CrispError, FormatError, ModelError, PassOrderError, PatternError, TraceError, UnknownTargetError,
    VerificationError,
)
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.ir.layer_info import LayerInfo
from crisp.pruning.head import to_original_classes
from crisp.sparsity.masking import apply_masks
from crisp.pruning.prune import prune
from crisp.pruning.loop import PruneHistory, StepRecord
from crisp.pruning.saliency import magnitude_saliency, taylor_saliency
from crisp.pruning.stability import StabilityCertificate, stability_certificate
from crisp.pruning.user_classes import user_classes
from crisp.onnx.optimize import AlreadyOptimizedError, optimize_onnx, optimize_onnx_with_report
from crisp.sparsity.pattern import Pattern
from crisp.pipeline import PIPELINES, Pipeline, default_pipeline
from crisp.report import Report
from crisp.sparsity.selection import select_hybrid_masks
from crisp.simulate_api import compare_archs, simulate

__version__ = "0.1.0"

__all__ = [
    "PruneHistory", "StabilityCertificate", "StepRecord", "magnitude_saliency", "prune", "stability_certificate",
    "taylor_saliency", "to_original_classes", "user_classes",
    "AlreadyOptimizedError", "optimize_onnx", "optimize_onnx_with_report",
    "ArgumentError", "CompiledModel", "CrispError", "FormatError", "HybridSparseTensor", "LayerInfo", "ModelError", "PIPELINES",
    "PassOrderError", "Pattern", "PatternError", "Pipeline", "Report", "TraceError", "UnknownTargetError",
    "VerificationError", "apply_masks", "compare_archs", "compile", "load", "default_pipeline", "models", "select_hybrid_masks",
    "simulate",
]
