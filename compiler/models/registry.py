"""Build the in-project models by name with seeded random weights."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from crisp.errors import ModelError
from crisp.models.mobilenet import mobilenet_v2
from crisp.models.resnet import resnet18, resnet50
from crisp.models.small_cnn import small_cnn
from crisp.models.vgg import vgg16

_BUILDERS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "resnet18": (resnet18, (3, 224, 224)),
    "resnet50": (resnet50, (3, 224, 224)),
    "mobilenet_v2": (mobilenet_v2, (3, 224, 224)),
    "vgg16": (vgg16, (3, 224, 224)),
    "small_cnn": (small_cnn, (1, 8, 8)),
}
MODEL_NAMES = tuple(_BUILDERS)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial, seeded statistics and affine parameters (in place),
    so that a random model exercises BN folding like a trained one would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                if mod.affine:
                    mod.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                    mod.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return model


def build(name: str, num_classes: int | None = None, seed: int = 0, **kwargs) -> nn.Module:
    """Build model ``name`` (one of MODEL_NAMES) in eval mode with seeded random weights."""
    key = name.lower().replace("-", "_")
    if key == "mobilenetv2":
        key = "mobilenet_v2"
    if key not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    builder, _ = _BUILDERS[key]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(**({} if num_classes is None else {"num_classes": num_classes}), **kwargs)
    randomize_batchnorm(model, seed)
    return model.eval()


def input_shape(name: str) -> tuple[int, ...]:
    """The (C, H, W) input shape model ``name`` is built for."""
    key = name.lower().replace("-", "_")
    if key not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _BUILDERS[key][1]
