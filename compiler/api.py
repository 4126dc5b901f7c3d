"""``crisp.compile``: trace, run the default pipeline, hand the lowered graph to a backend."""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any, Callable, Sequence

import torch
from torch import nn

from crisp.backends import BackendInput, get_backend
from crisp.backends.registry import backend_options, registered_backends
from crisp.compiled_model import CompiledModel
from crisp.errors import ModelError, UnknownTargetError
from crisp.ir.tracing import layers_of, trace
from crisp.sparsity.pattern import Pattern, check_sparsity, resolve_pattern
from crisp.sparsity.selection import DEFAULT_ALLOCATION, check_allocation
from crisp.pipeline import default_pipeline
from crisp.progress import note
from crisp.pruning.saliency import taylor_saliency
from crisp.report import Report
from crisp.validate import (
    InputSpec, check_bool, check_example_inputs, check_model, check_names_in, check_options, check_seed, clone_inputs,
)

log = logging.getLogger(__name__)


def _as_inputs(example_inputs) -> tuple:
    """The example inputs as a tuple of private copies (the caller's tensors are never touched)."""
    if isinstance(example_inputs, torch.Tensor):
        return clone_inputs((example_inputs,))
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        return clone_inputs(example_inputs)
    raise ModelError("example_inputs must be a tensor or a non-empty tuple of tensors, e.g. (torch.randn(1, 3, 224, 224),)")


def _check_names(model: nn.Module, names: Sequence[str], what: str) -> tuple[str, ...]:
    known = [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]
    return check_names_in(what, names, known, error=ModelError)


def _check_arguments(model, target, seed, options: dict, flags: dict) -> None:
    """The plain arguments of :func:`compile`, checked before any work (the model, the backend's options)."""
    if not isinstance(target, str):
        raise UnknownTargetError(f"target must be a backend name (a string), got {target!r}; "
                                 f"registered targets: {', '.join(registered_backends())}")
    check_seed(seed)
    for name, value in flags.items():
        check_bool(name, value)
    known = backend_options(target)
    if known is not None:  # the backend's options and, for the hint, compile's own keywords
        own = [k for k in inspect.signature(compile).parameters if k not in ("model", "example_inputs", "options")]
        check_options(options, (*known, *own), f"crisp.compile(target={target!r})")
    check_model(model, "compile")


def resolve_saliency(saliency, calibration=None, classes=None, seed: int = 0) -> "str | Callable":
    """``"magnitude"``, a callable ``module -> {param: score}``, or ``"taylor"`` (needs
    ``calibration`` data and the user's ``classes``)."""
    if saliency == "magnitude" or callable(saliency):
        return saliency
    if saliency == "taylor":
        if calibration is None or classes is None:
            raise ModelError("saliency='taylor' needs calibration=<iterable of (input, label) batches> and classes=[...]")
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
    allocation: str = DEFAULT_ALLOCATION,
    **options: Any,
) -> CompiledModel:
    """Compile ``model`` to hybrid N:M + block sparsity and return a :class:`CompiledModel`.

    The model is copied and put in eval mode; the caller's model and state_dict are untouched.
    ``sparsity`` is the global target over the pruned layers' weights (>= 1 - n/m). Layers named in
    ``exclude`` (and everything inside them) stay dense and are not traced into. Each layer's
    saliency (one float per weight, as large as the dense model) is dropped once the masks are
    chosen, so that the compiled model holds less than the dense one; ``keep_saliency=True`` keeps
    it in ``compiled.layers[i].saliency``. ``allocation`` is the rule that shares the target
    among layers (:data:`crisp.sparsity.selection.ALLOCATIONS`; ``"paper"`` is Alg. 1 read literally).
    """
    _check_arguments(model, target, seed, options, dict(verify=verify, progress=progress, keep_saliency=keep_saliency))
    p = resolve_pattern(pattern, block)
    allocation = check_allocation(allocation)
    kappa = check_sparsity(sparsity, p)
    backend = get_backend(target)
    if not isinstance(model, nn.Module):
        raise ModelError(f"compile takes a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(example_inputs)
    check_example_inputs(inputs, model)
    exclude = _check_names(model, exclude, "exclude")
    leaf_modules = _check_names(model, leaf_modules, "leaf_modules")
    saliency_fn = resolve_saliency(saliency, calibration, classes, seed)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        original = _eval_copy(model)
        note(log, progress, "crisp: tracing %s ...", type(model).__name__)
        gm = trace(_eval_copy(model), leaf_modules=exclude + leaf_modules, example_inputs=inputs)
        pipeline = default_pipeline(original, inputs, p, kappa, saliency_fn, exclude, verify=verify, progress=progress,
                                    allocation=allocation)
        lowered = pipeline(gm).graph_module
        layers = layers_of(lowered)
        if not keep_saliency:
            for info in layers:
                info.saliency = None
        out = backend(BackendInput(lowered, layers, inputs, dict(options, pattern=p, sparsity=kappa)))
    verification = lowered.meta.get("crisp_verification", {})
    report = Report.from_layers(layers, lowered.meta.get("crisp_sparsity"), verification.get("relative_error"))
    compiled = CompiledModel(out.module, lowered, layers, report, target, out.artifacts)
    compiled.input_spec = InputSpec.of(inputs)
    return compiled


def _eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()
