"""User data as (input, label) batches, validated and restricted to the user's classes.

``prune`` and ``taylor_saliency`` accept any re-iterable of ``(input, label)`` batches (a list,
a ``DataLoader``). :class:`ClassBatches` checks each batch as it goes by (labels must be 1-D
integer class ids, one per input), keeps only the samples of the user classes, and optionally
renumbers their labels (for a shrunk classifier head). Every problem the user can cause is a
:class:`DataError` that says which batch and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from crisp.errors import CrispError


class DataError(CrispError, ValueError):
    """Training/calibration data or a class list that crisp cannot use."""


def validate_classes(classes: object, num_outputs: int | None = None) -> tuple[int, ...]:
    """Check a user class list (non-empty, distinct integer ids inside the model's outputs)."""
    if classes is None:
        raise DataError("classes is required: pass the user-preferred class ids, e.g. classes=[3, 5]")
    if isinstance(classes, torch.Tensor):
        classes = classes.flatten().tolist()
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise DataError(f"classes must be a list of integer class ids, got {classes!r}")
    ids = list(classes)
    if not ids:
        raise DataError("classes is empty: pass at least one user-preferred class id")
    out: list[int] = []
    for c in ids:
        if isinstance(c, bool) or not isinstance(c, int):
            if hasattr(c, "__index__") and not isinstance(c, bool):
                c = int(c.__index__())
            else:
                raise DataError(f"class ids must be integers, got {c!r} in classes={ids!r}")
        if c in out:
            raise DataError(f"class {c} appears twice in classes={ids!r}; list each class once")
        out.append(c)
    if num_outputs is not None:
        bad = [c for c in out if c < 0 or c >= num_outputs]
        if bad:
            raise DataError(
                f"classes {bad} are outside the model's outputs: it predicts {num_outputs} classes "
                f"(ids 0..{num_outputs - 1})"
            )
    return tuple(out)


def reiterable(data: Iterable, name: str) -> Iterable:
    """Return ``data`` if it can be iterated more than once, else its batches as a list."""
    if data is None:
        raise DataError(f"{name} is required: pass an iterable of (input, label) batches, e.g. a DataLoader")
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise DataError(f"{name} must be an iterable of (input, label) batches (e.g. a DataLoader), got {type(data).__name__}")
    if iter(data) is data:  # a one-shot iterator or generator: keep its batches
        return list(data)
    return data


def split_batch(batch: object, index: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one ``(input, label)`` batch and return it as two tensors."""
    if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) != 2:
        raise DataError(f"{name} batch {index} must be an (input, label) pair, got {type(batch).__name__}")
    x, y = batch
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.dtype == torch.bool or y.dtype.is_floating_point or y.dtype.is_complex:
        raise DataError(
            f"{name} batch {index}: labels must be integer class ids, got dtype {y.dtype}"
            + (" (one-hot or probabilities? pass labels.argmax(1))" if y.dim() == 2 else "")
        )
    if y.dim() != 1:
        raise DataError(
            f"{name} batch {index}: labels must be a 1-D tensor of class ids, got shape {tuple(y.shape)}"
        )
    if x.dim() == 0 or x.shape[0] != y.shape[0]:
        raise DataError(
            f"{name} batch {index}: {y.shape[0]} labels for inputs of shape {tuple(x.shape)}; "
            "the first input dimension must be the batch"
        )
    return x, y.long()


def _is_array(x: object) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


class CalibrationBatches:
    """Re-iterable ``(input, label)`` batches from the other forms calibration data takes.

    ``data`` is an iterable of ``(input, label)`` batches (passed through), one ``(inputs,
    labels)`` pair of arrays (cut into batches of ``batch_size``), or inputs without labels (one
    array, or an iterable of input batches), which ``label(inputs)`` labels (e.g. the model's own
    predictions). Inputs are cast to ``dtype`` when given. The batches are checked downstream by
    :class:`ClassBatches`.
    """

    def __init__(self, data: object, *, label: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None, batch_size: int = 32, name: str = "calibration data"):
        self.label, self.dtype, self.batch_size, self.name = label, dtype, batch_size, name
        self.pair = (isinstance(data, (tuple, list)) and len(data) == 2 and all(_is_array(d) for d in data)
                     and len(data[0]) == len(data[1]) and np.ndim(data[1]) == 1)
        self.data = data if self.pair or _is_array(data) else reiterable(data, name)

    def _labelled(self, x: object, y: object, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(x)
        x = x if self.dtype is None else x.to(self.dtype)
        if y is None:
            if self.label is None:
                raise DataError(f"{self.name} batch {index} has no labels: pass (input, label) batches")
            y = self.label(x)
        return x, torch.as_tensor(y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.pair or _is_array(self.data):
            x, y = (self.data if self.pair else (self.data, None))
            for i, start in enumerate(range(0, len(x), self.batch_size)):
                end = start + self.batch_size
                yield self._labelled(x[start:end], None if y is None else y[start:end], i)
            return
        for i, batch in enumerate(self.data):
            if _is_array(batch):
                yield self._labelled(batch, None, i)
            else:
                x, y = split_batch(batch, i, self.name)
                yield self._labelled(x, y, i)


class ClassBatches:
    """Re-iterable batches of ``data`` holding only samples of ``classes``.

    ``remap=True`` renumbers the labels to positions in ``classes`` (``classes[i]`` -> ``i``).
    Batches without any user-class sample are skipped.
    """

    def __init__(self, data: Iterable, classes: Sequence[int], *, remap: bool = False, name: str = "train_data"):
        self.data = reiterable(data, name)
        self.classes = tuple(classes)
        self.remap = remap
        self.name = name
        self._ids = torch.tensor(self.classes, dtype=torch.long)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(self.data):
            x, y = split_batch(batch, i, self.name)
            keep = torch.isin(y, self._ids)
            if not bool(keep.any()):
                continue
            x, y = x[keep], y[keep]
            if self.remap:
                y = (y[:, None] == self._ids[None, :]).long().argmax(1)
            yield x, y

    def count(self) -> int:
        """Number of user-class samples (one pass over the data, no model)."""
        return sum(int(y.shape[0]) for _, y in self)

    def require_samples(self) -> int:
        n = self.count()
        if n == 0:
            raise DataError(
                f"{self.name} holds no samples of the user classes {list(self.classes)}; "
                "pass data that contains them (or check the class ids)"
            )
        return n

    def first_inputs(self) -> torch.Tensor:
        for i, batch in enumerate(self.data):
            x, _ = split_batch(batch, i, self.name)
            return x
        raise DataError(f"{self.name} is empty: it yields no batches")


def num_outputs(model: nn.Module, example: torch.Tensor) -> int:
    """Number of classes the model predicts, from one forward pass on one sample (model unchanged)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example[:1])
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(f"the model must return logits of shape [batch, classes]; it returned {shape}")
    return int(out.shape[1])
