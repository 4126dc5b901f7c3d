"""The shared argument checkers: every public entry point (compile, prune, optimize_onnx, simulate,
load_arch, the CLI) checks user arguments here, so each kind of bad value gets the same CrispError.

Each checker takes the argument's name (as the user spells it) and raises ``error`` (a CrispError
subclass, :class:`ArgumentError` by default) whose message names it and says what is accepted.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from crisp.errors import ArgumentError, CrispError, ModelError

__all__ = ["ArgumentError", "InputSpec", "check_bool", "check_callable", "check_choice", "check_example_inputs",
           "check_int", "check_model", "check_names_in", "check_number", "check_options", "check_seed", "check_str",
           "check_str_list", "clone_inputs"]

SEED_MAX = 2**63 - 1


def _hint(key: str, known: Iterable[str]) -> str:
    near = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              error: type[CrispError] = ArgumentError) -> int:
    """``value`` as an int (bools refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        what = {0: "a non-negative ", 1: "a positive "}.get(minimum, "an ") if minimum is not None else "an "
        raise error(f"{name} must be {what}integer in [{_bound(minimum)}, {_bound(maximum)}], got {value!r}")
    return value


def _bound(b) -> str:
    return "..." if b is None else f"{b:g}" if isinstance(b, float) else str(b)


def check_number(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                 positive: bool = False, error: type[CrispError] = ArgumentError) -> float:
    """``value`` as a finite float (bools and NaN/Inf refused) within ``[minimum, maximum]``;
    ``positive=True`` also refuses 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        value = float(value)
    except OverflowError:
        raise error(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    span = f"[{_bound(minimum)}, {_bound(maximum)}]"
    if positive and value <= 0:
        raise error(f"{name} must be positive (a number in {span}), got {value!r}")
    if minimum == 0 and value < 0:
        raise error(f"{name} must be a non-negative number (in {span}), got {value!r}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise error(f"{name} must be a number in {span}, got {value!r}")
    return value


def check_bool(name: str, value: Any, *, error: type[CrispError] = ArgumentError) -> bool:
    if not isinstance(value, bool):
        raise error(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed for ``torch.manual_seed``: an integer in [0, 2**63 - 1]."""
    return check_int(name, value, minimum=0, maximum=SEED_MAX)


def check_str(name: str, value: Any, *, error: type[CrispError] = ArgumentError) -> str:
    if not isinstance(value, str) or not value:
        raise error(f"{name} must be a non-empty string, got {value!r} ({type(value).__name__})")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str], *, error: type[CrispError] = ArgumentError) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = _hint(value, choices) if isinstance(value, str) else ""
        raise error(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}{hint}")
    return value


def check_str_list(name: str, value: Any, *, error: type[CrispError] = ArgumentError) -> tuple[str, ...]:
    """A string or a list/tuple of non-empty strings, as a tuple (``None`` is refused: pass ``[]``)."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise error(f"{name} must be a list of module names, e.g. {name}=['layer4'], got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise error(f"{name} must hold non-empty module-name strings, got {item!r} in {name}")
    return tuple(value)


def check_names_in(name: str, values: Sequence[str], known: Sequence[str], what: str = "a module of the model",
                   *, glob: bool = True, error: type[CrispError] = ArgumentError) -> tuple[str, ...]:
    """Every entry of ``values`` names one of ``known``: equal, a parent (``"layer4"`` of
    ``"layer4.0.conv1"``) or, with ``glob``, an fnmatch pattern matching one."""
    import fnmatch

    values = check_str_list(name, values, error=error)
    for v in values:
        hit = any(k == v or k.startswith(v + ".") or (glob and fnmatch.fnmatchcase(k, v)) for k in known)
        if not hit:
            raise error(f"{name} names {v!r}, which is not {what}{_hint(v, known)}")
    return values


def check_options(options: Mapping[str, Any], known: Iterable[str], where: str,
                  *, error: type[CrispError] = ArgumentError) -> None:
    """Refuse keyword options that ``where`` does not know, listing the known ones."""
    known = sorted(set(known))
    for key in options:
        if key not in known:
            listed = ", ".join(known) if known else "none"
            raise error(f"{where} got an unknown option {key!r}{_hint(key, known)}; known options: {listed}")


def check_callable(name: str, value: Any, *, allow_none: bool = False,
                   error: type[CrispError] = ArgumentError) -> Any:
    if value is None and allow_none:
        return value
    if not callable(value):
        raise error(f"{name} must be callable, got {value!r} ({type(value).__name__})")
    return value


# --- models and tensors -------------------------------------------------------------------------------

COMPILABLE_DTYPES = ("torch.float32", "torch.float64")


def clone_inputs(inputs: Sequence[Any]) -> tuple:
    """Detached copies of the tensors in ``inputs`` (others as given): a model that changes its input in
    place never touches the caller's tensors, and every run sees the same values."""
    import torch

    return tuple(x.detach().clone() if isinstance(x, torch.Tensor) else x for x in inputs)


def _weight_hook(module) -> str | None:
    for hook in list(module._forward_pre_hooks.values()):
        kind = type(hook).__name__
        if kind == "WeightNorm":
            return "torch.nn.utils.weight_norm (old API): call torch.nn.utils.remove_weight_norm(layer) first"
        if kind == "SpectralNorm":
            return "torch.nn.utils.spectral_norm: call torch.nn.utils.remove_spectral_norm(layer) first"
    if getattr(module, "parametrizations", None) is not None:
        names = ", ".join(module.parametrizations.keys())
        return (f"a parametrization of {names}: call torch.nn.utils.parametrize.remove_parametrizations(layer, "
                f"{next(iter(module.parametrizations.keys()))!r}) first")
    return None


def check_model(model: Any, where: str = "compile", *, error: type[CrispError] = ModelError) -> None:
    """Refuse models crisp cannot copy, run or prune as given, naming the layer and the fix: not an
    nn.Module, uninitialized lazy or meta-device parameters, float16/bfloat16 weights, weight_norm /
    spectral_norm hooks or parametrizations."""
    import torch
    from torch import nn
    from torch.nn.parameter import UninitializedParameter

    if not isinstance(model, nn.Module):
        raise error(f"{where} takes a torch.nn.Module, got {type(model).__name__}")
    for mname, module in model.named_modules():
        label = f"layer {mname!r} ({type(module).__name__})" if mname else f"the model ({type(module).__name__})"
        why = _weight_hook(module)
        if why is not None:
            raise error(f"{label} uses {why}, then {where} the model")
        for pname, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if isinstance(t, UninitializedParameter) or type(t).__name__.startswith("Uninitialized"):
                raise error(f"{label} has an uninitialized {pname} (a lazy module): run the model once on a real "
                            f"input to initialize it, then {where} it")
            if t.device.type == "meta":
                raise error(f"{label}'s {pname} is on the meta device (no values): load real weights, e.g. "
                            f"model.to_empty(device='cpu') and load_state_dict(...), then {where} it")
            if t.is_floating_point() and str(t.dtype) not in COMPILABLE_DTYPES:
                raise error(f"{label}'s {pname} is {str(t.dtype).replace('torch.', '')}: crisp compiles float32 and "
                            f"float64 models (its kernels and its 1e-4 verification run in float32); "
                            f"{where} model.float() instead")


def model_float_dtype(model) -> Any:
    """The dtype of the model's first floating-point parameter (None when it has none)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return None


def check_example_inputs(inputs: Sequence[Any], model, *, error: type[CrispError] = ModelError) -> None:
    """Each example tensor is on a real device, finite, and of the model's floating dtype."""
    import torch

    want = model_float_dtype(model)
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            continue
        if x.device.type == "meta":
            raise error(f"example input {i} is on the meta device (no values): pass a real tensor, e.g. torch.randn(...)")
        if x.is_floating_point() and want is not None and x.dtype != want:
            d, w = str(x.dtype).replace("torch.", ""), str(want).replace("torch.", "")
            raise error(f"example input {i} is {d} but the model's weights are {w}: pass x.to(torch.{w}) "
                        f"(or convert the model to {d})")
        if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
            raise error(f"example input {i} has NaN or Inf values: pass finite example inputs")


# --- calls of a compiled model ------------------------------------------------------------------------

class InputSpec:
    """What each input of a compiled model must be: dtype, rank and every size but the batch, as in
    the example inputs it was compiled with."""

    def __init__(self, specs: Sequence[tuple[Any, tuple[int, ...]] | None]):
        self.specs = list(specs)

    @classmethod
    def of(cls, inputs: Sequence[Any]) -> "InputSpec":
        import torch

        return cls([(x.dtype, tuple(x.shape)) if isinstance(x, torch.Tensor) else None for x in inputs])

    def describe(self) -> str:
        return ", ".join("?" if s is None else f"{str(s[0]).replace('torch.', '')}[{', '.join(['N', *map(str, s[1][1:])])}]"
                         for s in self.specs)

    def check(self, args: Sequence[Any], error: type[CrispError] = ModelError) -> None:
        """Refuse arguments that do not match: a non-tensor, another dtype, rank or non-batch size."""
        import torch

        if len(args) != len(self.specs):
            raise error(f"the compiled model takes {len(self.specs)} input(s) ({self.describe()}), got {len(args)}")
        for i, (x, spec) in enumerate(zip(args, self.specs)):
            if spec is None:
                continue
            dtype, shape = spec
            if not isinstance(x, torch.Tensor):
                raise error(f"input {i} of the compiled model must be a torch.Tensor {self.describe()}, "
                            f"got {type(x).__name__}")
            if x.dtype != dtype:
                raise error(f"input {i} is {str(x.dtype).replace('torch.', '')} but the model was compiled for "
                            f"{str(dtype).replace('torch.', '')}: pass x.to({dtype})")
            if x.dim() != len(shape) or tuple(x.shape[1:]) != shape[1:]:
                raise error(f"input {i} has shape {list(x.shape)} but the model was compiled for {self.describe()} "
                            "(any batch size N; the other sizes are fixed at compile time): recompile with an "
                            "example input of this shape")
