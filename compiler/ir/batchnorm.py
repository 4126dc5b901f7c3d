"""BatchNorm folding: the one place crisp folds an eval-mode BatchNorm into the conv or linear before it.

The arithmetic is torch's (``torch.nn.utils.fusion``); :func:`fold_batchnorms` finds the
``layer -> BatchNorm`` pairs of a traced graph and removes the folded BatchNorm nodes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

# the BatchNorm that may follow each layer type (as torch.fx.experimental.optimization.fuse pairs them)
_PAIRS: tuple[tuple[type, type], ...] = (
    (nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d), (nn.Linear, nn.BatchNorm1d),
)


def foldable(layer: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` (exactly a torch BatchNorm, eval mode, running statistics) folds into ``layer``."""
    pair = any(isinstance(layer, lt) and type(bn) is bt for lt, bt in _PAIRS)
    return pair and not bn.training and bn.track_running_stats and bn.running_var is not None


def batchnorm_affine(bn: nn.Module, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel with ``bn(x) == scale * x + shift`` in eval mode, in ``dtype``."""
    dtype = dtype or bn.running_var.dtype
    cast = (lambda t: None if t is None else t.detach().to(dtype))  # noqa: E731
    with torch.no_grad():
        identity = torch.ones(bn.running_var.shape[0], 1, dtype=dtype)
        scale, shift = fuse_conv_bn_weights(identity, None, cast(bn.running_mean), cast(bn.running_var), bn.eps,
                                            cast(bn.weight), cast(bn.bias))
    return scale.data[:, 0], shift.data


def fold_batchnorm(layer: nn.Module, bn: nn.Module) -> None:
    """Rewrite ``layer`` (a conv or linear) in place so that ``layer(x) == bn(layer_before(x))`` in eval mode.
    Each output channel is scaled as a whole, so a weight that is zero stays zero."""
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            weight = torch.ones_like(bn.running_mean) if bn.weight is None else bn.weight
            bias = torch.zeros_like(bn.running_mean) if bn.bias is None else bn.bias
            layer.weight, layer.bias = fuse_linear_bn_weights(layer.weight, layer.bias, bn.running_mean,
                                                              bn.running_var, bn.eps, weight, bias)
        else:
            layer.weight, layer.bias = fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean,
                                                            bn.running_var, bn.eps, bn.weight, bn.bias)


def fold_batchnorms(gm: fx.GraphModule, accept: Callable[[fx.Node], bool] = lambda node: True) -> list[tuple[fx.Node, str]]:
    """Fold every BatchNorm module call whose only input is a layer module call that feeds nothing
    else and that ``accept`` takes; the BatchNorm node is removed (its module too, once unused).
    Returns (layer node, BatchNorm module name) for each fold."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = []
    for node in list(gm.graph.nodes):
        src = node.args[0] if node.op == "call_module" and len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1 and calls[src.target] == 1):
            continue  # a layer module called twice would be folded for both calls
        layer, bn = gm.get_submodule(src.target), gm.get_submodule(node.target)
        shape = getattr(src.meta.get("tensor_meta"), "shape", None)
        if isinstance(layer, nn.Linear) and shape is not None and len(shape) != 2:
            continue  # BatchNorm1d on [N, L, features] normalizes L, not the linear's outputs
        if not foldable(layer, bn) or not accept(src):
            continue
        fold_batchnorm(layer, bn)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded.append((src, node.target))
    if folded:
        gm.delete_all_unused_submodules()
    return folded
