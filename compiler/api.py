"""``crisp.compile``: trace, run the default pipeline, hand the lowered graph to a backend."""

from __future__ import annotations

import difflib
import logging
from typing import Any, Callable, Sequence

import torch
from torch import nn

from crisp.compiled_model import CompiledModel
from crisp.errors import ModelError
from crisp.ir.tracing import layers_of, trace
from crisp.sparsity.pattern import Pattern, check_sparsity, resolve_pattern
from crisp.pipeline import default_pipeline
from crisp.progress import note
from crisp.report import Report

log = logging.getLogger(__name__)


def _as_inputs(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        return tuple(example_inputs)
    raise ModelError("example_inputs must be a tensor or a non-empty tuple of tensors, e.g. (torch.randn(1, 3, 224, 224),)")


def _check_names(model: nn.Module, names: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    known = [n for n, _ in model.named_modules() if n]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ModelError(f"{what} names {name!r}, which is not a module of the model{hint}")
    return tuple(names)


def resolve_saliency(saliency, calibration=None, classes=None, seed: int = 0) -> "str | Callable":
    """``"magnitude"``, a callable ``module -> {param: score}``, or ``"taylor"`` (needs
    ``calibration`` data and the user's ``classes``)."""
    if saliency == "magnitude" or callable(saliency):
        return saliency
    if saliency == "taylor":
        if calibration is None or classes is None:
            raise ModelError("saliency='taylor' needs calibration=<iterable of (input, label) batches> and classes=[...]")
        try:
            from crisp.pruning.saliency import taylor_saliency
        except ImportError as exc:
            raise ModelError("class-aware Taylor saliency is not available in this build of crisp") from exc
        return lambda module: taylor_saliency(module, calibration, classes, seed=seed)
    raise ModelError(f"unknown saliency {saliency!r}; use 'magnitude', 'taylor' or a callable")


def compile(
    model: nn.Module,
    example_inputs,
    *,
    target: str = "cpu",
    pattern: "Pattern | str" = "2:4",
    block: int | None = None,
    sparsity: float = 0.9,
    saliency: "str | Callable" = "magnitude",
    exclude: Sequence[str] = (),
    leaf_modules: Sequence[str] = (),
    seed: int = 0,
    calibration=None,
    classes=None,
    verify: bool = True,
    progress: bool = False,
    keep_saliency: bool = False,
    **options: Any,
) -> CompiledModel:
    """Compile ``model`` to hybrid N:M + block sparsity and return a :class:`CompiledModel`.

    The model is copied and put in eval mode; the caller's model and state_dict are untouched.
    ``sparsity`` is the global target over the pruned layers' weights (>= 1 - n/m). Layers named in
    ``exclude`` (and everything inside them) stay dense and are not traced into. Each layer's
    saliency (one float per weight, as large as the dense model) is dropped once the masks are
    chosen, so that the compiled model holds less than the dense one; ``keep_saliency=True`` keeps
    it in ``compiled.layers[i].saliency``.
    """
    from crisp.backends import get_backend

    p = resolve_pattern(pattern, block)
    kappa = check_sparsity(sparsity, p)
    backend = get_backend(target)
    if not isinstance(model, nn.Module):
        raise ModelError(f"compile takes a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(example_inputs)
    exclude = _check_names(model, exclude, "exclude")
    leaf_modules = _check_names(model, leaf_modules, "leaf_modules")
    saliency_fn = resolve_saliency(saliency, calibration, classes, seed)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        original = _eval_copy(model)
        note(log, progress, "crisp: tracing %s ...", type(model).__name__)
        gm = trace(_eval_copy(model), leaf_modules=exclude + leaf_modules)
        pipeline = default_pipeline(original, inputs, p, kappa, saliency_fn, exclude, verify=verify, progress=progress)
        lowered = pipeline(gm).graph_module
        layers = layers_of(lowered)
        if not keep_saliency:
            for info in layers:
                info.saliency = None
        from crisp.backends import BackendInput

        out = backend(BackendInput(lowered, layers, inputs, dict(options, pattern=p, sparsity=kappa)))
    verification = lowered.meta.get("crisp_verification", {})
    report = Report.from_layers(layers, lowered.meta.get("crisp_sparsity"), verification.get("relative_error"))
    return CompiledModel(out.module, lowered, layers, report, target, out.artifacts)


def _eval_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()
