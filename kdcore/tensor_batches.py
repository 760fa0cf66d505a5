"""Batches of in-memory tensor data sets gathered in one indexing per tensor.

A ``DataLoader`` over a ``TensorDataset`` fetches a batch item by item (one ``tensor[i]`` per item and per
tensor) and then stacks the items: for a batch of 64 digits about 190 us of host work on this project's
CPU, a fifth of a small model's whole training step (BENCHMARKS.md, engine overhead, session 20).
:class:`TensorBatches` answers PyTorch's ``__getitems__`` (the fetcher's batched access) by indexing each
tensor once with the batch's indices, and :func:`collate` hands that batch on as it is. The sampler is not
touched, so the order, the random draws and a resumed run's batches stay the same, and the batch is the
same to the bit as ``default_collate``'s: a list with one tensor per tensor of the data set.

The gather is ``index_select``, not ``tensor[rows]``: on a many-core host PyTorch's advanced-indexing kernel
runs even a 64 x 64 batch as a parallel region, and the OpenMP workers it wakes then spin between steps.
On a 16-core GPU host that was 14 CPU seconds for each second of training (BENCHMARKS.md, engine
overhead, session 22); ``index_select`` keeps a batch that small on the calling thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset


class TensorBatches(Dataset):
    """The items of a ``TensorDataset``, or of a ``Subset`` of one, fetched a whole batch at a time.

    ``indexed``: each item is ``(index, item)``, each batch ``(indices, batch)``, as
    :class:`kdcore.teacher_cache.IndexedDataset` gives them. Use :meth:`of` to wrap a data set when it can
    be; load with ``collate_fn=`` :func:`collate`.
    """

    def __init__(
        self, tensors: Sequence[torch.Tensor], rows: torch.Tensor | None = None, indexed: bool = False
    ) -> None:
        self.tensors, self.rows, self.indexed = tuple(tensors), rows, indexed

    @classmethod
    def of(cls, dataset: Dataset, indexed: bool = False) -> TensorBatches | None:
        """``dataset`` gathered by batch, or None when it is not a plain ``TensorDataset`` or a ``Subset`` of
        one (a subclass that overrides ``__getitem__`` decides its items itself and is left alone)."""
        rows = None
        if type(dataset) is Subset:
            rows = torch.as_tensor(dataset.indices, dtype=torch.long)
            dataset = dataset.dataset
        plain = isinstance(dataset, TensorDataset) and type(dataset).__getitem__ is TensorDataset.__getitem__
        if not plain:
            return None
        return cls(dataset.tensors, rows, indexed)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.tensors[0])

    def __getitem__(self, index: int) -> Any:
        row = int(self.rows[index]) if self.rows is not None else index
        item = tuple(tensor[row] for tensor in self.tensors)
        return (index, item) if self.indexed else item

    def __getitems__(self, indices: list[int]) -> Any:
        """The whole batch: the list of tensors ``default_collate`` makes of a ``TensorDataset``'s items,
        preceded by the items' indices when ``indexed``."""
        positions = torch.as_tensor(indices, dtype=torch.long)
        rows = self.rows.index_select(0, positions) if self.rows is not None else positions
        batch = [tensor.index_select(0, rows) for tensor in self.tensors]
        return (positions, batch) if self.indexed else batch


def collate(batch: Any) -> Any:
    """The loader's collate function for :class:`TensorBatches`: the batch as ``__getitems__`` gathered it
    (the DataLoader hands what ``__getitems__`` returns to its collate function)."""
    return batch
