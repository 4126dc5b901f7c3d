"""VerifyAgainstMaskedDense: run the lowered graph and the original model with the selected
masks applied (eval mode) on the example inputs, and fail if they differ by more than the
relative tolerance. Records the error in ``graph_module.meta["crisp_verification"]``."""

from __future__ import annotations

import torch
from torch import fx, nn

from crisp.errors import VerificationError
from crisp.ir.tracing import layer_nodes
from crisp.sparsity.masking import apply_masks, relative_error
from crisp.validate import clone_inputs

from crisp.passes.base import CrispPass


def _flat_tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat_tensors(o)]
    return []


class VerifyAgainstMaskedDense(CrispPass):
    needs = ("lowered",)
    adds = ("verified",)

    def __init__(self, original: nn.Module, example_inputs: tuple, rtol: float = 1e-4):
        self.original = original
        self.example_inputs = tuple(example_inputs)
        self.rtol = rtol

    def call(self, graph_module: fx.GraphModule) -> bool:
        masks = {info.weight_name: info.mask for _, info in layer_nodes(graph_module) if info.mask is not None}
        reference = apply_masks(self.original, masks)
        with torch.no_grad():
            expected = _flat_tensors(reference(*clone_inputs(self.example_inputs)))  # each run on fresh copies:
            actual = _flat_tensors(graph_module(*clone_inputs(self.example_inputs)))  # a forward may change its input
        if len(expected) != len(actual):
            raise VerificationError(f"compiled model returns {len(actual)} tensors, the masked model {len(expected)}")
        errors = [relative_error(a, e) for a, e in zip(actual, expected)]
        worst = max(errors, default=0.0)
        graph_module.meta["crisp_verification"] = {"relative_error": worst, "rtol": self.rtol}
        if not worst <= self.rtol:
            raise VerificationError(
                f"compiled model differs from the masked dense model by {worst:.3g} relative error (> {self.rtol:g}); "
                "this is a crisp bug: please report it with the model"
            )
        return False
