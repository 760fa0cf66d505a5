"""Built-in ``classify`` plugin: image-classification distillation, the first thing most users try.

Data: an ImageFolder tree given with ``--data PATH`` (``PATH/train/<class>/*.png`` and ``PATH/val/...``,
or one ``PATH/<class>/*`` tree split by ``options.val_fraction``), or by default the 8×8 handwritten
digits that ship with scikit-learn (1,797 real images, 10 classes). Models: small built-in CNNs and an
MLP for CPU runs, and torchvision's ResNet-18 and MobileNetV3-Small (randomly initialised: no weights are
downloaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Subset, TensorDataset

from kdcore.checkpoint import atomic_directory
from kdcore.hookspecs import hookimpl
from kdcore.tasks import Task, TaskData

DIGITS_DEFAULTS: dict[str, Any] = {
    "teacher": {"arch": "cnn_large", "epochs": 12, "lr": 2e-3},
    "student": {"arch": "cnn_small", "epochs": 30, "lr": 5e-3},
    "distill": {
        "temperature": {"name": "constant", "value": 4.0},
        "alpha": {"name": "constant", "value": 0.5},
    },
    "data": {"batch_size": 64},
    "options": {"image_size": 32, "channels": 3, "val_fraction": 0.2, "train_fraction": 1.0},
}

#: The train/val split does not follow the run's seed: a teacher trained in one run may teach in another
#: (``teacher.checkpoint``) without ever having seen that run's validation images.
SPLIT_SEED = 0

ARCHITECTURES = ("mlp", "cnn_small", "cnn_large", "resnet18", "mobilenet_v3_small")


# --- data ----------------------------------------------------------------------------------------


def _split_indices(n: int, val_fraction: float, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"options.val_fraction must be between 0 and 1, got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _limit(indices: list[int], fraction: float, seed: int) -> list[int]:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"options.train_fraction must be in (0, 1], got {fraction}")
    keep = max(1, round(len(indices) * fraction))
    return sorted(np.random.default_rng(seed + 1).permutation(indices)[:keep].tolist())


def load_digits_data(config: Mapping[str, Any]) -> TaskData:
    """The scikit-learn digits as 1×8×8 float tensors in [0, 1], split train/val by ``options``."""
    from sklearn.datasets import load_digits

    options, seed = config["options"], config["seed"]
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    full = TensorDataset(images, labels)
    train_idx, val_idx = _split_indices(len(full), options["val_fraction"])
    train_idx = _limit(train_idx, options["train_fraction"], seed)
    info = {"num_classes": 10, "in_channels": 1, "image_size": 8, "source": "sklearn.datasets.load_digits"}
    return TaskData(
        train=Subset(full, train_idx), val=Subset(full, val_idx), info=info, deterministic_train=True
    )


def load_image_folder(config: Mapping[str, Any]) -> TaskData:
    """An ImageFolder tree at ``data.path``: ``train/`` and ``val/`` subfolders, or one tree to split."""
    from torchvision import datasets, transforms

    root, options = Path(config["data"]["path"]), config["options"]
    if not root.is_dir():
        raise FileNotFoundError(f"data.path {root} is not a directory (expected an ImageFolder tree)")
    size, channels = options["image_size"], options["channels"]
    if channels not in (1, 3):
        raise ValueError(f"options.channels must be 1 or 3, got {channels}")
    steps = (
        [transforms.Grayscale(channels)]
        if channels == 1
        else [transforms.Lambda(lambda im: im.convert("RGB"))]
    )
    transform = transforms.Compose([*steps, transforms.Resize((size, size)), transforms.ToTensor()])
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = datasets.ImageFolder(str(root / "train"), transform=transform)
        val = datasets.ImageFolder(str(root / "val"), transform=transform)
        if train.classes != val.classes:
            raise ValueError(
                f"{root}/train and {root}/val have different class folders: {train.classes} vs {val.classes}"
            )
        train_idx = _limit(list(range(len(train))), options["train_fraction"], config["seed"])
        train = Subset(train, train_idx)
        classes = val.classes
    else:
        full = datasets.ImageFolder(str(root), transform=transform)
        train_idx, val_idx = _split_indices(len(full), options["val_fraction"])
        train_idx = _limit(train_idx, options["train_fraction"], config["seed"])
        train, val, classes = Subset(full, train_idx), Subset(full, val_idx), full.classes
    info = {
        "num_classes": len(classes),
        "in_channels": channels,
        "image_size": size,
        "classes": list(classes),
    }
    return TaskData(train=train, val=val, info=info, deterministic_train=True)  # no random augmentation


def build_data(config: Mapping[str, Any]) -> TaskData:
    return load_image_folder(config) if config["data"]["path"] else load_digits_data(config)


def write_digits_imagefolder(root: str | Path, val_fraction: float = 0.2) -> Path:
    """Write the scikit-learn digits as 8-bit grayscale PNGs in ``root/{train,val}/<digit>/NNNN.png``.

    The tree is written into a temporary sibling directory and renamed to ``root`` at the end, so an
    interrupted export leaves no half-written data set; an existing non-empty ``root`` is never touched.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    train_idx, val_idx = _split_indices(len(digits.target), val_fraction)
    with atomic_directory(root) as staging:
        for split, indices in (("train", train_idx), ("val", val_idx)):
            for label in range(10):
                (staging / split / str(label)).mkdir(parents=True)
            for i in indices:
                pixels = np.clip(digits.images[i] * (255.0 / 16.0), 0, 255).astype(np.uint8)
                path = staging / split / str(digits.target[i]) / f"{i:04d}.png"
                Image.fromarray(pixels, mode="L").save(path, format="PNG")
    return Path(root)


# --- models --------------------------------------------------------------------------------------


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
    """Build ``arch`` for ``info['in_channels']`` input channels and ``info['num_classes']`` classes."""
    from torchvision import models

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
        model = models.resnet18(weights=None, num_classes=k)
        model.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model
    if arch == "mobilenet_v3_small":
        model = models.mobilenet_v3_small(weights=None, num_classes=k)
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(c, first.out_channels, 3, stride=2, padding=1, bias=False)
        return model
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


# --- registration --------------------------------------------------------------------------------

TASK = Task(
    name="digits",
    description="Image classification: scikit-learn digits by default, or any ImageFolder with --data",
    build_data=build_data,
    build_model=build_model,
    architectures=ARCHITECTURES,
    defaults=DIGITS_DEFAULTS,
)


@hookimpl
def kd_register_tasks(register):
    register(TASK)


@hookimpl
def kd_register_commands(cli):
    @cli.command("digits-to-imagefolder")
    @click.argument("path", type=click.Path(file_okay=False))
    @click.option("--val-fraction", default=0.2, show_default=True, help="Share of images in val/.")
    def digits_to_imagefolder(path: str, val_fraction: float) -> None:
        """Write the scikit-learn digits as an ImageFolder tree of PNGs at PATH (for --data)."""
        root = write_digits_imagefolder(path, val_fraction=val_fraction)
        click.echo(f"wrote {sum(1 for _ in root.rglob('*.png'))} images to {root}")
