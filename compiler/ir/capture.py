"""Graphs that torch.fx's symbolic tracer did not produce — a ``torch.export`` program or a
TorchDynamo graph — made into crisp's IR: weights as ``get_attr`` nodes under their original
names, and every functional conv / linear / BatchNorm whose weights are plain parameters raised
to an ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` at the path of those parameters, so that
the passes see the same layers, with the same names, as in a traced model.

A functional layer whose weight is computed (weight standardization, parametrizations) or shared
is left as it is: it runs as written and stays dense.
"""

from __future__ import annotations

import operator
import re
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

aten = torch.ops.aten
_CONV = {torch.conv2d, F.conv2d, aten.conv2d.default, aten.conv2d.padding}
_LINEAR = {F.linear, torch._C._nn.linear, aten.linear.default}
_BATCHNORM = {F.batch_norm, aten.batch_norm.default}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _bound(node: fx.Node, names: tuple, defaults: dict) -> dict:
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    return {k: args.get(k, defaults.get(k)) for k in names}


def _param_path(node, gm: fx.GraphModule, users: int = 1) -> tuple[str, str] | None:
    """(owner path, attribute) of a get_attr node used only by the layer, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or len(node.users) != users:
        return None
    path, _, attr = str(node.target).rpartition(".")
    return (path, attr) if path else None


def _owner_is_plain(gm: fx.GraphModule, path: str, attrs: set[str]) -> bool:
    """The module at ``path`` holds exactly ``attrs`` (and nothing the rest of the graph could use)."""
    try:
        owner = gm.get_submodule(path)
    except AttributeError:
        return False
    held = {n for n, _ in owner.named_parameters(recurse=False)} | {n for n, _ in owner.named_buffers(recurse=False)}
    return not list(owner.children()) and held <= attrs | {"num_batches_tracked"}


def _conv_module(w: torch.Tensor, b, a: dict) -> nn.Conv2d:
    cout, cin_g, kh, kw = w.shape
    pad = a["padding"]
    conv = nn.Conv2d(cin_g * a["groups"], cout, (kh, kw), stride=a["stride"], padding=pad if isinstance(pad, str) else
                     tuple(pad) if isinstance(pad, (list, tuple)) else pad, dilation=a["dilation"], groups=a["groups"],
                     bias=b is not None)
    conv.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w, requires_grad=False)
    if b is not None:
        conv.bias = b if isinstance(b, nn.Parameter) else nn.Parameter(b, requires_grad=False)
    return conv


def _raise_node(gm: fx.GraphModule, node: fx.Node, skip: tuple[str, ...]) -> bool:
    if node.target in _CONV or node.target in _LINEAR:
        conv = node.target in _CONV
        a = _bound(node, _CONV_ARGS if conv else ("input", "weight", "bias"), _CONV_DEFAULTS)
        parts = [_param_path(a["weight"], gm)] + ([_param_path(a["bias"], gm)] if a["bias"] is not None else [])
        if any(p is None for p in parts) or len({p[0] for p in parts}) != 1 or parts[0][1] != "weight":
            return False
        if conv and (a["weight"].meta.get("val", None) is not None and a["weight"].meta["val"].dim() != 4):
            return False
        path = parts[0][0]
        if path.startswith(skip) or not _owner_is_plain(gm, path, {"weight", "bias"}):
            return False
        w = gm.get_parameter(f"{path}.weight") if hasattr(gm.get_submodule(path), "weight") else None
        b = getattr(gm.get_submodule(path), "bias", None) if a["bias"] is not None else None
        if w is None or (conv and w.dim() != 4) or (not conv and w.dim() != 2):
            return False
        if conv:
            mod = _conv_module(w, b, a)
        else:
            mod = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            mod.weight, mod.bias = w, b
        return _swap(gm, node, path, mod, a["input"], [a["weight"], a["bias"]])
    if node.target in _BATCHNORM:
        return _raise_batchnorm(gm, node, skip)
    return False


def _raise_batchnorm(gm: fx.GraphModule, node: fx.Node, skip: tuple[str, ...]) -> bool:
    if node.target is F.batch_norm:
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    else:
        names = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
    a = _bound(node, names, {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5})
    refs = [a[k] for k in ("running_mean", "running_var", "weight", "bias")]
    parts = [_param_path(r, gm) for r in refs]
    if a["training"] or any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
        return False
    path = parts[0][0]
    if path.startswith(skip) or not _owner_is_plain(gm, path, {"weight", "bias", "running_mean", "running_var"}):
        return False
    owner = gm.get_submodule(path)
    bn = nn.BatchNorm2d(owner.running_mean.numel(), eps=a["eps"], momentum=a["momentum"])
    with torch.no_grad():
        for k in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, k).copy_(getattr(owner, k))
    return _swap(gm, node, path, bn.eval(), a["input"], refs)


def _swap(gm, node, path, module, x, attrs) -> bool:
    gm.set_submodule(path, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(path, (x,))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    for a in attrs:
        if isinstance(a, fx.Node) and not a.users:
            gm.graph.erase_node(a)
    return True


def raise_functional_layers(gm: fx.GraphModule, skip: Iterable[str] = ()) -> fx.GraphModule:
    """Raise functional conv / linear / BatchNorm calls on plain parameters to modules, in place;
    layers under the module paths in ``skip`` stay functional (dense)."""
    skip = tuple(f"{s}." for s in skip) + tuple(skip)
    for node in list(gm.graph.nodes):
        if node.op == "call_function":
            _raise_node(gm, node, skip)
    _drop_unused(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


def _drop_unused(gm: fx.GraphModule) -> None:
    for node in reversed(list(gm.graph.nodes)):
        if node.op in ("get_attr",) and not node.users:
            gm.graph.erase_node(node)
        elif node.op == "call_module" and str(node.target) == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)  # torch.export's input guard; the passes check shapes themselves
        elif node.op == "call_function" and node.target is operator.getitem and not node.users:
            gm.graph.erase_node(node)


def export_graph(model: nn.Module, example_inputs: tuple, skip: Iterable[str] = ()) -> fx.GraphModule:
    """``torch.export`` (non-strict) ``model`` and return crisp's IR of it (see the module docstring)."""
    ep = torch.export.export(model, tuple(example_inputs), strict=False)
    gm = ep.module()
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"torch.export returned a {type(gm).__name__}, not a GraphModule")
    return raise_functional_layers(gm, skip)


_DYNAMO_NAME = re.compile(r"^L_self_(.*)_$")


def dynamo_attr_name(placeholder: str) -> str | None:
    """``L_self_modules_layer1_modules_0_parameters_weight_`` -> ``layer1.0.weight``; None for user inputs."""
    m = _DYNAMO_NAME.match(placeholder)
    if not m or not re.search(r"(?:^|_)(?:parameters|buffers)_", m.group(1)):
        return None
    parts = [p for p in re.split(r"(?:^|_)(?:modules|parameters|buffers)_", m.group(1)) if p]
    return ".".join(parts) if parts else None
