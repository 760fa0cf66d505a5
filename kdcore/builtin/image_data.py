"""The ``classify`` task's data: the scikit-learn digits, an ImageFolder tree, and the digits as one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset, TensorDataset

from kdcore.checkpoint import atomic_directory
from kdcore.tasks import TaskData

#: The train/val split does not follow the run's seed: a teacher trained in one run may teach in another
#: (``teacher.checkpoint``) without ever having seen that run's validation images.
SPLIT_SEED = 0


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
