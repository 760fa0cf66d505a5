"""The toy task's data: three interleaved 2-D spirals, the same points in every run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import TensorDataset

from kdcore import TaskData

NUM_CLASSES = 3
POINTS_PER_CLASS = 200
VAL_FRACTION = 0.25

#: Fixed seed for generating and splitting the points. It deliberately ignores ``config["seed"]``: the
#: data set (and the train/val split) must be the same in every run, so that a teacher trained in one run
#: can teach in another (``teacher.checkpoint``) without having seen that run's validation points.
DATA_SEED = 1234


def make_spirals(
    points_per_class: int = POINTS_PER_CLASS, noise: float = 0.15, seed: int = DATA_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """Three interleaved spiral arms in the plane: ``(x [N, 2] float32, y [N] int64)``, N = 3 × points."""
    generator = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for label in range(NUM_CLASSES):
        radius = torch.linspace(0.1, 1.0, points_per_class)
        angle = radius * 1.5 * math.pi + label * 2 * math.pi / NUM_CLASSES
        angle = angle + noise * torch.randn(points_per_class, generator=generator)
        xs.append(torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], dim=1))
        ys.append(torch.full((points_per_class,), label, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def build_data(config: Mapping[str, Any]) -> TaskData:
    """Build the train/val split of the spirals (``--data`` is not used by this toy task)."""
    x, y = make_spirals()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED))
    n_val = round(len(y) * VAL_FRACTION)
    val_idx, train_idx = order[:n_val], order[n_val:]
    return TaskData(
        train=TensorDataset(x[train_idx], y[train_idx]),
        val=TensorDataset(x[val_idx], y[val_idx]),
        info={"num_classes": NUM_CLASSES, "in_features": 2},
    )
