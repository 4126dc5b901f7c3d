"""Layer specs of the in-project models (ResNet-50, MobileNetV2, VGG-16, ...) for the CLI,
the benchmark and the tests.

Two ways to get them:

- ``via="compile"``: ``crisp.compile(model, target="crisp-stc", ...)`` and take its layers --
  exactly what a user gets, but it traces, selects, folds and lowers the whole model;
- ``via="fast"`` (default): one forward pass with hooks for the layer shapes, then the same
  magnitude saliency and the same selection (:func:`crisp.sparsity.selection.select_hybrid_masks`)
  on the layers that ``crisp.compile`` would prune (groups = 1, zero padding, K >= one block,
  Linear), building specs straight from the masks (no compact tensors). It gives the same
  masks as compile with ``saliency="magnitude"``, in a fraction of the time.

``distribution="global"`` ranks all layers together (CRISP's selection, what compile does);
``"per-layer"`` selects each layer on its own at the target sparsity. The in-project models
have random (seeded) weights: their magnitudes scale as 1/sqrt(fan-in), so global ranking
prunes wide layers far harder than a trained network would. ``per-layer`` is the stand-in
for the paper's trained ResNet-50, whose layers all sit near the global sparsity (Fig. 8).
"""

from __future__ import annotations

import torch
from torch import nn

from crisp.api import compile as compile_model
from crisp.errors import ModelError
from crisp.ir.layer_outputs import layer_outputs
from crisp.models import build
from crisp.models.registry import input_shape
from crisp.sparsity.gemm_view import weight_to_gemm
from crisp.sparsity.pattern import Pattern, check_sparsity, resolve_pattern
from crisp.passes.find_prunable_layers import describe_layer
from crisp.sparsity.selection import select_hybrid_masks

from crisp.runtime.simulator.workload import LayerSpec

DISTRIBUTIONS = ("global", "per-layer")


def fast_model_specs(model: nn.Module, example: torch.Tensor, pattern: Pattern, sparsity: float,
                     distribution: str = "global") -> list[LayerSpec]:
    if distribution not in DISTRIBUTIONS:
        raise ModelError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
    kappa = check_sparsity(sparsity, pattern)
    _, shapes = layer_outputs(model, example)  # every Conv2d / Linear
    batch = int(example.shape[0])
    mods = dict(model.named_modules())
    order = list(shapes)  # execution order, as crisp.compile's graph lists the layers (selection breaks ties by it)
    # the same decision FindPrunableLayers makes inside crisp.compile
    prunable = [n for n in order if describe_layer(n, mods[n], shapes[n], batch, pattern, None).prunable]
    sal = {n: weight_to_gemm(mods[n].weight.detach()).abs() for n in prunable}
    masks = {}
    if distribution == "global" and sal:
        sel = select_hybrid_masks(sal, pattern, kappa)
        masks = {n: s.mask for n, s in sel.layers.items()}
    else:
        for n in prunable:
            masks[n] = select_hybrid_masks({n: sal[n]}, pattern, kappa).layers[n].mask
    specs = []
    for n in order:
        mod, out = mods[n], shapes[n]
        w = mod.weight
        if isinstance(mod, nn.Conv2d):
            positions = int(out[-1] * out[-2])
            kw = {"kind": "conv", "groups": mod.groups, "in_channels": mod.in_channels,
                  "kernel_positions": mod.kernel_size[0] * mod.kernel_size[1],
                  "in_positions": positions * mod.stride[0] * mod.stride[1] * batch}
        else:
            total = 1
            for d in out[:-1]:
                total *= int(d)
            positions = max(1, total // batch)
            kw = {"kind": "linear"}
        rows, k = weight_to_gemm(w.detach()).shape
        if n in masks:
            specs.append(LayerSpec.from_mask(n, masks[n], pattern, positions * batch, **kw))
        else:
            specs.append(LayerSpec(name=n, M=rows, K=k, N=positions * batch, **kw))
    return specs


def model_specs(name: str, *, pattern: "Pattern | str" = "2:4", block: int = 64, sparsity: float = 0.9,
                distribution: str = "global", batch: int = 1, seed: int = 0, via: str = "fast"):
    """Layers of in-project model ``name`` pruned as asked: LayerSpecs (``via="fast"``) or the
    compiled model's LayerInfo list (``via="compile"``, global distribution only)."""
    p = resolve_pattern(pattern, block)
    model = build(name, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn((batch, *input_shape(name)), generator=gen)
    if via == "compile":
        if distribution != "global":
            raise ModelError("via='compile' selects globally; use via='fast' for distribution='per-layer'")
        compiled = compile_model(model, example, target="reference", pattern=p, sparsity=sparsity, seed=seed,
                                 verify=False)
        return compiled.layers
    if via != "fast":
        raise ModelError(f"via must be 'fast' or 'compile', got {via!r}")
    return fast_model_specs(model, example, p, sparsity, distribution)
