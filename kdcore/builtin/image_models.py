"""The ``classify`` task's models: small CNNs and an MLP for CPU runs, torchvision's ResNet-18 and
MobileNetV3-Small (randomly initialised: no weights are downloaded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kdcore.builtin.classify import ARCHITECTURES


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Two 3×3 conv blocks and a linear head (~5k parameters at 16/32 channels)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(*_conv(in_channels, width), *_conv(width, 2 * width, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class LargeCNN(nn.Module):
    """Four 3×3 conv blocks (64-64-128-128 channels) with dropout: the default CPU teacher (~0.3M params)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv(in_channels, 64),
            *_conv(64, 64),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv(64, 128),
            *_conv(128, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_model(arch: str, info: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    """Build ``arch`` for ``info['in_channels']`` input channels and ``info['num_classes']`` classes.

    torchvision is imported only for its networks (about 0.15 s of start-up here that a run of the small
    networks does not need)."""
    c, k, size = info["in_channels"], info["num_classes"], info["image_size"]
    if arch == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(c * size * size, 32), nn.ReLU(inplace=True), nn.Linear(32, k)
        )
    if arch == "cnn_small":
        return SmallCNN(c, k)
    if arch == "cnn_large":
        return LargeCNN(c, k)
    if arch == "resnet18":
        from torchvision import models

        model = models.resnet18(weights=None, num_classes=k)
        model.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model
    if arch == "mobilenet_v3_small":
        from torchvision import models

        model = models.mobilenet_v3_small(weights=None, num_classes=k)
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(c, first.out_channels, 3, stride=2, padding=1, bias=False)
        return model
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
