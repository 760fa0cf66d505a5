"""Small CNNs for either sensor: the same family, built for the input channels of the data it sees.

Architectures (``teacher.arch`` / ``student.arch``): three blocks of (3x3 convolution, batch norm, ReLU,
2x2 max-pooling), then global average pooling and a linear layer. ``info["in_channels"]`` (3 for the
RGB camera, 1 for the thermal sensor) and ``info["num_classes"]`` come from the data the stage trains
on: the teacher's from its own data (``TaskData.teacher_data``), the student's from the new sensor's.

=========  ===============  ====================================  ===========================
name       channels         parameters (10 classes)               role
=========  ===============  ====================================  ===========================
cnn_large  32-64-128        94,762 (RGB in)                       teacher on the old sensor
cnn_small  16-32-64         24,058 (grey in)                      student on the new sensor
=========  ===============  ====================================  ===========================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

WIDTHS: dict[str, tuple[int, int, int]] = {"cnn_large": (32, 64, 128), "cnn_small": (16, 32, 64)}


def build_model(arch: str, info: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    """The CNN ``arch`` for ``info['in_channels']`` input channels and ``info['num_classes']`` classes."""
    from torch import nn  # here, so that loading the plugin does not import torch

    if arch not in WIDTHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(WIDTHS)}")
    layers: list[nn.Module] = []
    channels = int(info["in_channels"])
    for width in WIDTHS[arch]:
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, int(info["num_classes"]))]
    return nn.Sequential(*layers)
