"""The user-preferred classes: the classes seen most often in a window of recent observations.

``user_classes(observations, window=..., top=k)`` returns the ``k`` most frequent classes of the
last ``window`` observations; ``min_share=s`` returns every class making up at least share
``s`` of that window. Observations are class ids (1-D) or per-sample scores/logits (2-D,
argmax taken). The result is sorted by class id.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crisp.pruning.class_data import DataError


def user_classes(
    observations: torch.Tensor | Sequence[int],
    *,
    window: int | None = None,
    top: int | None = None,
    min_share: float | None = None,
) -> list[int]:
    """User-preferred classes of the most recent ``window`` observations (all when None)."""
    obs = observations if isinstance(observations, torch.Tensor) else torch.as_tensor(list(observations))
    if obs.dim() == 2:
        obs = obs.argmax(1)
    elif obs.dim() != 1:
        raise DataError(f"observations must be class ids [N] or scores [N, classes], got shape {tuple(obs.shape)}")
    elif obs.dtype == torch.bool or obs.dtype.is_floating_point or obs.dtype.is_complex:
        raise DataError(f"1-D observations must be integer class ids, got dtype {obs.dtype}")
    if obs.numel() == 0:
        raise DataError("no observations: user classes need at least one recent label or prediction")
    if (top is None) == (min_share is None):
        raise DataError("pass exactly one of top= (how many classes) or min_share= (share of the window)")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise DataError(f"window must be a positive integer, got {window!r}")
        obs = obs[-window:]
    obs = obs.long()
    if bool((obs < 0).any()):
        raise DataError("class ids must be >= 0")
    counts = torch.bincount(obs)
    present = torch.nonzero(counts).flatten()
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise DataError(f"top must be a positive integer, got {top!r}")
        # most frequent first; ties go to the smaller class id (stable sort on ascending ids)
        order = torch.sort(counts[present], descending=True, stable=True).indices
        chosen = present[order[:top]]
    else:
        share = float(min_share)
        if not 0.0 < share <= 1.0:
            raise DataError(f"min_share must be in (0, 1], got {min_share!r}")
        chosen = present[counts[present].double() / obs.numel() >= share - 1e-12]
        if chosen.numel() == 0:
            raise DataError(f"no class reaches a share of {share:g} in the window; lower min_share")
    return sorted(int(c) for c in chosen)
