"""The toy task's models: a wide MLP teacher and a tiny MLP student."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

#: Architecture name (``kd_plugin_example.ARCHITECTURES``) -> hidden layer widths.
HIDDEN: dict[str, tuple[int, ...]] = {
    "mlp_teacher": (64, 64),
    "mlp_student": (8,),
}


def build_model(arch: str, info: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    """An MLP ``in_features -> hidden... -> num_classes`` for ``arch`` (one of :data:`HIDDEN`)."""
    if arch not in HIDDEN:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(HIDDEN)}")
    layers: list[nn.Module] = []
    width = info["in_features"]
    for hidden in HIDDEN[arch]:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, info["num_classes"]))
    return nn.Sequential(*layers)
