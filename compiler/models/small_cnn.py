"""A small CNN for 8x8 (scikit-learn digits) or 32x32 inputs, used by tests and benchmarks."""

from __future__ import annotations

from torch import Tensor, nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 8, width: int = 64):
        super().__init__()
        if input_size not in (8, 32):
            raise ValueError(f"SmallCNN is built for 8x8 or 32x32 inputs, got {input_size}")
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * w)
        self.conv4 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(2 * w)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(2 * w * 4, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.relu(self.bn4(self.conv4(x)))
        x = self.pool(x).flatten(1)
        return self.fc2(self.relu(self.fc1(x)))


def small_cnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 8, width: int = 64) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, input_size, width)
