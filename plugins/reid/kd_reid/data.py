"""Datasets, transforms and the P x K identity sampler for re-ID training and evaluation.

Images are decoded once (:func:`kd_reid.market.load_image`) and kept as ``uint8`` tensors resized to
``options.height x options.width``: a few thousand pedestrian crops take a few MB, and an epoch then
costs no JPEG decoding. Training augmentation (torchvision): horizontal flip, 10 % zero padding and a
random crop back to size, random erasing (Zhong et al. 2020) with ``options.erasing``. It draws from
torch's global generator, which kdcore seeds per stage and saves for ``--resume``.

Batches are P identities x K images (``options.instances`` = K, P = ``data.batch_size // K``), so every
anchor of the batch-hard triplet loss has positives and negatives. A search stage (``options.search``)
trains its weights on half the images of each identity and its architecture on the other half
(:func:`search_split`), as DARTS splits its training set.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from kd_reid.market import Record, load_image

#: ImageNet statistics: the normalisation torchvision's ResNets are built around.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def decode_all(records: Sequence[Record], height: int, width: int) -> torch.Tensor:
    """Every image of ``records`` as one ``uint8`` tensor ``[N, 3, height, width]`` (bilinear resize)."""
    from torchvision.transforms.v2 import functional as TF

    images = torch.empty(len(records), 3, height, width, dtype=torch.uint8)
    for index, record in enumerate(records):
        image = TF.pil_to_tensor(load_image(record.path))
        images[index] = TF.resize(image, [height, width], antialias=True)
    return images


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images -> float, scaled to [0, 1] and normalised with :data:`MEAN` / :data:`STD`."""
    mean = torch.tensor(MEAN).view(-1, 1, 1)
    std = torch.tensor(STD).view(-1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def train_transform(height: int, width: int, erasing: float):
    """The training augmentation: flip, pad-and-crop, normalise, random erasing."""
    from torchvision.transforms import v2

    pad = max(1, round(0.1 * width))
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.Pad(pad),
            v2.RandomCrop((height, width)),
            v2.Lambda(normalise),
            v2.RandomErasing(p=erasing, value=0),
        ]
    )


class ReIDTrainSet(Dataset):
    """Training images with their identity labels: ``(image [3, H, W] float, label)``."""

    def __init__(self, records: Sequence[Record], images: torch.Tensor, transform) -> None:
        self.labels = [record.pid for record in records]
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.labels[index]


class ReIDEvalSet(Dataset):
    """Query then gallery images: ``(image, pid, camid, is_query)``; query items come first."""

    def __init__(self, query: Sequence[Record], gallery: Sequence[Record], images: torch.Tensor) -> None:
        self.records = list(query) + list(gallery)
        self.num_query = len(query)
        self.images = images

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, bool]:
        record = self.records[index]
        return normalise(self.images[index]), record.pid, record.camid, index < self.num_query


def search_split(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Indices for a search's weights and for its architecture: alternate images of each identity.

    Identities with one image keep it on the weight side. Both halves hold every identity with two or
    more images, so the identity classifier is trained and scored on the same classes.
    """
    weights, architecture = [], []
    seen: dict[int, int] = {}
    for index, label in enumerate(labels):
        count = seen.get(label, 0)
        (architecture if count % 2 else weights).append(index)
        seen[label] = count + 1
    return weights, architecture


class IdentityBatchSampler:
    """Batches of P identities x K images, drawn from ``generator`` each time it is iterated.

    An epoch has ``len(indices) // batch_size`` batches (at least one). Each batch draws P distinct
    identities at random, then K of each one's images, without replacement when it has K or more, with
    replacement otherwise.
    """

    def __init__(
        self, labels: Sequence[int], indices: Sequence[int], batch_size: int, instances: int, generator
    ) -> None:
        if instances < 2:
            raise ValueError(
                f"options.instances must be at least 2 (positives for the triplet loss), got {instances}"
            )
        if batch_size < 2 * instances or batch_size % instances:
            raise ValueError(
                f"data.batch_size ({batch_size}) must be a multiple of options.instances ({instances}) "
                "holding at least two identities"
            )
        self.by_identity: dict[int, list[int]] = {}
        for index in indices:
            self.by_identity.setdefault(labels[index], []).append(index)
        self.identities = sorted(self.by_identity)
        self.instances, self.generator = instances, generator
        self.per_batch = batch_size // instances
        if len(self.identities) < self.per_batch:
            raise ValueError(
                f"a batch of {batch_size} needs {self.per_batch} identities but the training set has "
                f"{len(self.identities)}; lower data.batch_size"
            )
        self.batches = max(1, len(indices) // batch_size)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        for _ in range(self.batches):
            batch: list[int] = []
            for identity in rng.sample(self.identities, self.per_batch):
                pool = self.by_identity[identity]
                if len(pool) >= self.instances:
                    batch += rng.sample(pool, self.instances)
                else:
                    batch += rng.choices(pool, k=self.instances)
            yield batch


def batch_sampler_for(labels: Sequence[int]):
    """The task's ``train_batch_sampler``: P x K batches over the stage's share of the training set."""

    def make(generator: torch.Generator, config: Mapping[str, Any], distilled: bool) -> IdentityBatchSampler:
        options = config["options"]
        indices = search_split(labels)[0] if options["search"] else range(len(labels))
        return IdentityBatchSampler(
            labels, list(indices), int(config["data"]["batch_size"]), int(options["instances"]), generator
        )

    return make
