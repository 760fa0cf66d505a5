"""Batch samplers for ``TaskData.train_batch_sampler``: how a stage's training batches are drawn."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class FewLabelBatches:
    """Semi-supervised batches: ``labelled_per_batch`` items from a few labelled ones, drawn over and
    over (each pass over them in a new order), then ``unlabelled_per_batch`` from the unlabelled items,
    each once an epoch (in a new order every epoch), for ``batches`` batches an epoch.

    ``labelled`` and ``unlabelled`` are indices into the training set (the two may point into different
    parts of it). Every random draw comes from ``generator``, the run's loader generator, so a resumed
    run continues the same sequence. With no unlabelled items the batches hold labelled items only.
    """

    labelled: np.ndarray
    unlabelled: np.ndarray
    labelled_per_batch: int
    unlabelled_per_batch: int
    batches: int
    generator: torch.Generator

    def __post_init__(self) -> None:
        if len(self.labelled) == 0:
            raise ValueError("FewLabelBatches needs at least one labelled item")
        if self.labelled_per_batch < 1 or self.unlabelled_per_batch < 0 or self.batches < 1:
            raise ValueError(
                "FewLabelBatches needs labelled_per_batch >= 1, unlabelled_per_batch >= 0 and batches >= 1, "
                f"got {self.labelled_per_batch}, {self.unlabelled_per_batch} and {self.batches}"
            )

    @staticmethod
    def batches_for(items: int, per_batch: int) -> int:
        """Batches an epoch that take ``items`` items, ``per_batch`` at a time (at least one)."""
        return max(1, -(-items // per_batch))

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        step = self.unlabelled_per_batch
        unlabelled = self.unlabelled[torch.randperm(len(self.unlabelled), generator=self.generator).numpy()]
        queue: list[int] = []
        for batch in range(self.batches):
            while len(queue) < self.labelled_per_batch:
                order = torch.randperm(len(self.labelled), generator=self.generator).numpy()
                queue += self.labelled[order].tolist()
            taken, queue = queue[: self.labelled_per_batch], queue[self.labelled_per_batch :]
            yield taken + unlabelled[batch * step : (batch + 1) * step].tolist()


def labelled_share(config: Mapping[str, Any]) -> tuple[int, int]:
    """``(labelled, unlabelled)`` items per batch for :class:`FewLabelBatches`: the config's
    ``options.labelled_per_batch`` and the rest of ``data.batch_size``.

    Raises:
        ValueError: naming both keys, unless ``1 <= labelled_per_batch <= data.batch_size - 1``.
    """
    batch_size = int(config["data"]["batch_size"])
    per_batch = int(config["options"]["labelled_per_batch"])
    if not 0 < per_batch < batch_size:
        raise ValueError(
            f"options.labelled_per_batch must be between 1 and data.batch_size - 1 ({batch_size - 1}), "
            f"got {per_batch}"
        )
    return per_batch, batch_size - per_batch
