"""Shrinking a classifier head to the user classes, with the mapping back to class ids.

:func:`shrink_head` keeps only the rows of the last ``nn.Linear`` that belong to ``classes``,
so the model outputs ``len(classes)`` logits; output ``i`` is original class ``classes[i]``.
The mapping is stored on the model as the buffer ``crisp_class_ids`` (saved with its
state_dict); :func:`to_original_classes` turns predictions back into original ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from crisp.errors import ModelError

CLASS_IDS_BUFFER = "crisp_class_ids"


def find_classifier(model: nn.Module, num_outputs: int) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` of ``model`` (module order), which must produce the logits."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError("shrink_head needs the model to end in an nn.Linear classifier; it has no nn.Linear")
    name, layer = linears[-1]
    if layer.out_features != num_outputs:
        raise ModelError(
            f"shrink_head: the last nn.Linear {name!r} has {layer.out_features} outputs but the model "
            f"predicts {num_outputs} classes; only a final Linear classifier can be shrunk"
        )
    return name, layer


def shrink_head(model: nn.Module, classes: Sequence[int], num_outputs: int) -> nn.Module:
    """Keep only ``classes``' rows of the classifier (in place); returns ``model``."""
    name, layer = find_classifier(model, num_outputs)
    idx = torch.tensor(list(classes), dtype=torch.long)
    new = nn.Linear(layer.in_features, len(idx), bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[idx])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[idx])
    new.train(layer.training)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    if hasattr(model, CLASS_IDS_BUFFER):
        delattr(model, CLASS_IDS_BUFFER)
    model.register_buffer(CLASS_IDS_BUFFER, idx.clone())
    return model


def class_ids(model: nn.Module) -> tuple[int, ...] | None:
    """Original class id of each output of a shrunk model, or None if the head was not shrunk."""
    ids = getattr(model, CLASS_IDS_BUFFER, None)
    return None if ids is None else tuple(int(i) for i in ids.tolist())


def to_original_classes(predictions: torch.Tensor, model_or_ids: nn.Module | Sequence[int]) -> torch.Tensor:
    """Map output indices (or logits ``[N, C]``, argmax taken) of a shrunk model to original class ids."""
    ids = class_ids(model_or_ids) if isinstance(model_or_ids, nn.Module) else tuple(model_or_ids)
    if ids is None:
        raise ModelError("this model's head was not shrunk (no crisp_class_ids); its outputs are already class ids")
    if predictions.dim() == 2:
        predictions = predictions.argmax(1)
    return torch.tensor(ids, dtype=torch.long)[predictions.long()]
