"""The paper's architectures, written in the project (no torchvision, no downloaded weights).

`build(name, num_classes=..., seed=...)` makes one by name with seeded random weights.
"""

from __future__ import annotations

from crisp.models.mobilenet import MobileNetV2, mobilenet_v2
from crisp.models.registry import MODEL_NAMES, build, randomize_batchnorm
from crisp.models.resnet import ResNet, resnet18, resnet50
from crisp.models.small_cnn import SmallCNN, small_cnn
from crisp.models.vgg import VGG, vgg16

__all__ = [
    "MODEL_NAMES", "MobileNetV2", "ResNet", "SmallCNN", "VGG", "build", "mobilenet_v2",
    "randomize_batchnorm", "resnet18", "resnet50", "small_cnn", "vgg16",
]
