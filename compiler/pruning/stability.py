"""Stability certificate for masked classifiers (Lemmas 3.4-3.6 of "semi-structured sparsity
by masking").

For a chain classifier ``softmax(f_d(...f_1(x)))`` with 1-Lipschitz activations (ReLU, pooling,
flatten) and infinity norms throughout, a sample predicted with confidence
``gamma = (p_top - p_second) / 2`` keeps its class

- after masking layer ``j`` (Lemma 3.4 with Lemma 3.3's masking perturbation) if
  ``gamma > ||dW_j|| * ||x|| * prod_{i != j} ||W_i||``;
- after masking every masked layer at once if ``gamma > ||x|| * sum_j ||dW_j|| *
  prod_{i < j} ||W_i * B_i|| * prod_{i > j} ||W_i||`` (Lemma 3.4 applied layer after layer,
  a telescoping sum; our extension);
- under any masking (Lemma 3.5) if ``gamma > ||x|| * prod_i ||W_i||``;
- after a weight update ``U_j`` reusing layer ``j``'s mask (Lemma 3.6) if
  ``gamma > (||W_j|| + ||U_j||) * ||x|| * prod_{i != j} ||W_i||``.

BatchNorm (eval statistics) is folded into the preceding conv/linear; a Conv2d's norm is the
largest absolute row sum of its GEMM view, an upper bound of the convolution's operator norm.
These bounds are worst-case and loose: on real networks they certify few samples, and the
certificate reports exactly the share they certify.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from crisp.errors import ModelError
from crisp.ir.batchnorm import batchnorm_affine
from crisp.sparsity.gemm_view import weight_to_gemm

_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Identity, nn.Flatten, nn.Dropout, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool1d, nn.MaxPool1d,
)
_PASS_FUNCTIONS = (torch.flatten, torch.relu, F.relu, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.dropout, operator.getitem)
_PASS_METHODS = ("flatten", "view", "reshape", "relu", "contiguous")
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class LayerBound:
    name: str
    weight_norm: float  # ||W_j||_inf (BatchNorm folded)
    mask_norm: float | None  # ||dW_j||_inf of the masking (None: layer not masked)
    coefficient: float | None  # gamma must exceed coefficient * ||x||_inf (Lemma 3.4)
    certified: float | None  # share of samples certified
    update_norm: float | None = None  # ||U_j||_inf
    update_coefficient: float | None = None  # Lemma 3.6
    update_certified: float | None = None


@dataclass
class StabilityCertificate:
    samples: int
    layers: list[LayerBound]
    all_layers_coefficient: float
    all_layers_certified: float  # share certified with every mask applied at once
    any_mask_coefficient: float
    any_mask_certified: float  # Lemma 3.5: certified under any masking
    mean_confidence: float
    median_input_norm: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{l.name}: {100 * l.certified:.1f}%" for l in self.layers if l.certified is not None]
        return (
            f"stability certificate on {self.samples} samples: all masks together "
            f"{100 * self.all_layers_certified:.1f}% certified; per layer " + ", ".join(parts)
        )


@dataclass
class _Layer:
    name: str  # parameter name of the weight, or the BatchNorm's module name
    module_name: str
    matrix: torch.Tensor | None  # folded GEMM view [rows, K] (None for a standalone BatchNorm)
    scale: torch.Tensor | None  # BatchNorm scale folded into the rows


def _chain_layers(model: nn.Module) -> list[_Layer]:
    """Weight layers of a chain classifier in order, BatchNorm folded; refuses anything else."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - report any trace failure as a model error
        raise ModelError(f"stability_certificate traces the model with torch.fx and failed: {exc}") from exc
    modules = dict(gm.named_modules())
    layers: list[_Layer] = []
    prev: torch.fx.Node | None = None
    pending_fold = False  # last weight layer may take a following BatchNorm
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise ModelError("stability_certificate supports models with one input")
            prev = node
            continue
        if node.op == "output":
            break
        if node.op == "get_attr":
            raise ModelError(f"stability_certificate: node {node.name} reads a tensor attribute; only chain classifiers are supported")
        inputs = node.all_input_nodes
        if inputs != [prev] or len(prev.users) != 1:
            raise ModelError(
                f"stability_certificate needs a chain classifier (each layer feeds only the next); "
                f"node {node.name} breaks the chain (residual connections are not covered by Lemmas 3.4-3.6)"
            )
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                g = weight_to_gemm(mod.weight.detach().to(torch.float64)).clone()
                layers.append(_Layer(f"{node.target}.weight", node.target, g, None))
                pending_fold = True
            elif isinstance(mod, _BN):
                scale, _ = batchnorm_affine(mod, torch.float64)
                if pending_fold:
                    last = layers[-1]
                    last.matrix = last.matrix * scale[:, None]
                    last.scale = scale if last.scale is None else last.scale * scale
                else:
                    layers.append(_Layer(node.target, node.target, None, scale))
                pending_fold = False
            elif isinstance(mod, _PASS_MODULES) or (isinstance(mod, nn.LeakyReLU) and abs(mod.negative_slope) <= 1):
                pending_fold = pending_fold and isinstance(mod, (nn.Identity, nn.Dropout))
            else:
                raise ModelError(
                    f"stability_certificate: module {node.target} ({type(mod).__name__}) is not a conv, linear, "
                    "BatchNorm or 1-Lipschitz activation/pooling; the lemmas do not cover it"
                )
        elif node.op == "call_function" and node.target in _PASS_FUNCTIONS:
            pending_fold = False
        elif node.op == "call_method" and node.target in _PASS_METHODS:
            pending_fold = pending_fold and node.target == "contiguous"
        else:
            raise ModelError(f"stability_certificate: operation {node.name} ({node.target}) is not covered by the lemmas")
        prev = node
    if not layers:
        raise ModelError("stability_certificate: the model has no conv or linear layer")
    return layers


def _inf_norm(layer: _Layer, matrix: torch.Tensor | None = None) -> float:
    if layer.matrix is None:
        return float(layer.scale.abs().max())
    m = layer.matrix if matrix is None else matrix
    return float(m.abs().sum(1).max())


def _confidences(model: nn.Module, data: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    gammas, norms = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in data:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = torch.as_tensor(x)
                p = torch.softmax(model(x).to(torch.float64), dim=1)
                top = p.topk(min(2, p.shape[1]), dim=1).values
                second = top[:, 1] if top.shape[1] > 1 else torch.zeros_like(top[:, 0])
                gammas.append((top[:, 0] - second) / 2)
                norms.append(x.reshape(x.shape[0], -1).abs().amax(1).to(torch.float64))
    finally:
        model.train(was_training)
    if not gammas:
        raise ModelError("stability_certificate: data yields no samples")
    return torch.cat(gammas), torch.cat(norms)


def _share(gamma: torch.Tensor, xnorm: torch.Tensor, coefficient: float) -> float:
    if not math.isfinite(coefficient):
        return 0.0
    return float((gamma > coefficient * xnorm).double().mean())


def stability_certificate(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    data: Iterable,
    update: nn.Module | dict[str, torch.Tensor] | None = None,
) -> StabilityCertificate:
    """Share of ``data``'s samples that Lemmas 3.4-3.6 guarantee keep ``model``'s prediction when
    ``masks`` (``{weight name: bool mask}``) are applied to the unmasked ``model``.

    ``update``: the updated weights (a model of the same architecture, or ``{name: tensor}``)
    for Lemma 3.6, which reuses each layer's mask after the update. ``data`` yields input
    batches or ``(input, label)`` batches; labels are ignored (the prediction is the reference).
    """
    layers = _chain_layers(model)
    by_name = {l.name: l for l in layers}
    unknown = [n for n in masks if n not in by_name]
    if unknown:
        raise ModelError(f"stability_certificate: masks name {unknown}, which are not conv/linear weights of the chain")
    gamma, xnorm = _confidences(model, data)
    norms = [_inf_norm(l) for l in layers]
    deltas: dict[str, float] = {}
    masked_norms: list[float] = []
    for l, nrm in zip(layers, norms):
        if l.name in masks:
            keep = weight_to_gemm(masks[l.name].to(torch.bool))
            if tuple(keep.shape) != tuple(l.matrix.shape):
                raise ModelError(f"stability_certificate: mask of {l.name} has the wrong shape {tuple(masks[l.name].shape)}")
            deltas[l.name] = _inf_norm(l, l.matrix * (~keep))
            masked_norms.append(_inf_norm(l, l.matrix * keep))
        else:
            masked_norms.append(nrm)

    updated = _updated_layers(model, update) if update is not None else None
    bounds: list[LayerBound] = []
    for j, l in enumerate(layers):
        if l.matrix is None:
            continue
        others = math.prod(n for i, n in enumerate(norms) if i != j)
        bound = LayerBound(l.name, norms[j], None, None, None)
        if l.name in deltas:
            bound.mask_norm = deltas[l.name]
            bound.coefficient = deltas[l.name] * others
            bound.certified = _share(gamma, xnorm, bound.coefficient)
            if updated is not None:
                u = updated[l.name] - l.matrix
                bound.update_norm = float(u.abs().sum(1).max())
                bound.update_coefficient = (norms[j] + bound.update_norm) * others
                bound.update_certified = _share(gamma, xnorm, bound.update_coefficient)
        bounds.append(bound)
    total = 0.0
    for j, l in enumerate(layers):
        if l.name in deltas:
            total += deltas[l.name] * math.prod(masked_norms[:j]) * math.prod(norms[j + 1:])
    any_mask = math.prod(norms)
    return StabilityCertificate(
        samples=int(gamma.numel()),
        layers=bounds,
        all_layers_coefficient=total,
        all_layers_certified=_share(gamma, xnorm, total),
        any_mask_coefficient=any_mask,
        any_mask_certified=_share(gamma, xnorm, any_mask),
        mean_confidence=float(gamma.mean()),
        median_input_norm=float(xnorm.median()),
    )


def _updated_layers(model: nn.Module, update: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Folded GEMM views of the updated weights, keyed like the chain's layers."""
    import copy

    if isinstance(update, nn.Module):
        upd_model = update
    elif isinstance(update, dict):
        upd_model = copy.deepcopy(model)
        state = upd_model.state_dict()
        for name, value in update.items():
            if name not in state:
                raise ModelError(f"stability_certificate: update names {name!r}, which the model does not have")
            state[name] = torch.as_tensor(value)
        upd_model.load_state_dict(state)
    else:
        raise ModelError("update must be a model of the same architecture or a {parameter name: tensor} dict")
    return {l.name: l.matrix for l in _chain_layers(upd_model) if l.matrix is not None}
