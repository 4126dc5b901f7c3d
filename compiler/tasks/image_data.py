"""The user's own samples for ``crisp prune --data``: an image folder (``DIR/<class>/*.png|jpg|jpeg|bmp``,
read with Pillow) or an ``.npz`` with ``inputs`` and ``labels``, as tensors with a held-out split.

In an image folder, the class folders in sorted order are the model's outputs 0, 1, 2, ... (the
torchvision ImageFolder convention); classes are named by folder name. In an ``.npz``, classes are
label indices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from crisp.pruning.class_data import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class UserData:
    x: torch.Tensor
    y: torch.Tensor
    class_ids: list[int]  # model outputs of the user classes
    class_names: list[str]


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("reading an image folder needs Pillow: pip install 'crisp[images]'") from exc
    return Image


def _read_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    Image = _pil()
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {str(path)!r}: {exc}; remove it or replace it with a valid image") from exc
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if channels not in (1, 3):
        arr = np.repeat(arr[:, :, :1], channels, axis=2)
    return arr.transpose(2, 0, 1)


def load_folder(root: Path, classes: Sequence[str], size: tuple[int, int], channels: int) -> UserData:
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"image folder {str(root)!r} has no class folders; lay it out as DIR/<class>/*.png")
    missing = [c for c in classes if c not in folders]
    if missing:
        raise DataError(f"class {missing[0]!r} is not a folder of {str(root)!r}; its classes are: {', '.join(folders)}")
    xs, ys = [], []
    for name in classes:
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {str(root / name)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            xs.append(_read_image(f, size, channels))
            ys.append(folders.index(name))
    return UserData(torch.from_numpy(np.stack(xs)), torch.tensor(ys), [folders.index(c) for c in classes], list(classes))


def load_npz(path: Path, classes: Sequence[str]) -> UserData:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = np.asarray(z["inputs"], dtype=np.float32), np.asarray(z["labels"]).astype(np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{str(path)!r} is not an .npz with arrays 'inputs' and 'labels': {exc}") from exc
    try:
        ids = [int(c) for c in classes]
    except ValueError as exc:
        raise DataError(f"classes of an .npz are label indices, got {list(classes)}") from exc
    present = sorted(set(y.tolist()))
    for c in ids:
        if c not in present:
            raise DataError(f"class {c} has no samples in {str(path)!r}; its labels are {present}")
    keep = np.isin(y, ids)
    return UserData(torch.from_numpy(x[keep]), torch.from_numpy(y[keep]), ids, [str(c) for c in ids])


def load_user_data(path: str | os.PathLike, classes: Sequence[str], size: tuple[int, int], channels: int,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> UserData:
    """The samples of ``classes`` from ``path`` (a folder or an .npz), normalized when mean/std are given."""
    p = Path(path)
    if p.is_dir():
        data = load_folder(p, classes, size, channels)
    elif p.suffix == ".npz" and p.is_file():
        data = load_npz(p, classes)
    else:
        raise DataError(f"--data {str(p)!r} is neither an image folder nor an existing .npz file")
    if mean is not None or std is not None:
        m = torch.tensor(mean if mean is not None else [0.0]).view(1, -1, 1, 1)
        s = torch.tensor(std if std is not None else [1.0]).view(1, -1, 1, 1)
        if m.shape[1] not in (1, data.x.shape[1]) or s.shape[1] not in (1, data.x.shape[1]):
            raise DataError(f"--mean/--std need 1 or {data.x.shape[1]} values (one per channel)")
        data.x = (data.x - m) / s
    return data


def holdout_split(data: UserData, share: float, seed: int) -> tuple[tuple, tuple]:
    """(train, held-out) as (x, y) pairs: ``share`` of each class held out (at least one sample)."""
    gen = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in data.class_ids:
        idx = torch.nonzero(data.y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        if len(idx) < 2:
            raise DataError(f"class {data.class_names[data.class_ids.index(c)]!r} needs at least 2 samples "
                            "(one to train on, one to hold out)")
        k = max(1, int(round(share * len(idx))))
        held.append(idx[:k])
        train.append(idx[k:])
    tr, he = torch.cat(train), torch.cat(held)
    return (data.x[tr], data.y[tr]), (data.x[he], data.y[he])


def user_class_accuracy(model, x: torch.Tensor, y: torch.Tensor, class_ids: Sequence[int]) -> float:
    """Accuracy when the prediction is the user class with the largest output."""
    with torch.no_grad():
        out = model(x)
    ids = torch.tensor(list(class_ids))
    pred = ids[out[:, ids].argmax(1)]
    return float((pred == y).float().mean())
