"""Teacher-output cache: the teacher's outputs for each training item, computed once per teacher.

With ``train.teacher_cache = true`` a distilled stage looks up the teacher's outputs for the batch's items
by their index in the training set; items not seen yet go through ``kd_soft_targets`` and are stored.
From the second epoch on (and for every later student of the same teacher: the variants of a run, the
no-KD baseline aside) the teacher does not run at all. The outputs are kept in memory and written to
``cache/teacher_<stage>.pt`` in the run directory (atomically) once every item is in, so a resumed run
reads them back instead of recomputing.

Keying by index is only right when an item is the same every time it is read. The engine therefore
refuses the cache (naming the reason) unless the task's data declares ``deterministic_train``, and also
when anything else decides the soft targets: feature hints (they need the teacher's features every
step) or a plugin's own ``kd_soft_targets`` (an online assistant, say).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch.utils.data import Dataset

from kdcore.checkpoint import atomic_write


class IndexedDataset(Dataset):
    """Yields ``(index, item)``; :func:`indexed_collate` turns a list of them into ``(indices, batch)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


def indexed_collate(collate_fn: Callable[[list[Any]], Any] | None) -> Callable[[list[Any]], Any]:
    """Collate ``(index, item)`` pairs: a tensor of indices and the items collated as usual."""
    from torch.utils.data import default_collate

    collate = collate_fn or default_collate

    def collate_indexed(pairs: list[tuple[int, Any]]) -> tuple[torch.Tensor, Any]:
        return torch.tensor([index for index, _ in pairs]), collate([item for _, item in pairs])

    return collate_indexed


def refusal(
    deterministic: bool, hints: Sequence[Any], pm: pluggy.PluginManager, trusted: str = ""
) -> str | None:
    """Why the teacher outputs of this run cannot be cached by item index, or None when they can.

    ``trusted`` names the plugin whose ``kd_soft_targets`` gives each item the same targets every time
    (its task declares ``TaskData.soft_targets_per_item``); any other plugin's still refuses the cache.
    """
    if not deterministic:
        return (
            "the task's training data does not declare deterministic_train (its items may differ between "
            "epochs, e.g. random crops), so outputs cannot be keyed by item"
        )
    if hints:
        return "distill.hints need the teacher's features at every step"
    others = [
        impl.plugin_name
        for impl in pm.hook.kd_soft_targets.get_hookimpls()
        if impl.plugin_name not in ("core", trusted)
    ]
    if others:
        return f"plugin {others[0]!r} decides the soft targets itself (kd_soft_targets)"
    return None


class TeacherCache:
    """The outputs of one teacher for every item of the training set (on the CPU, full precision).

    Args:
        size: the number of training items.
        path: where the complete cache is written (and read back by a resumed run).
    """

    def __init__(self, size: int, path: Path) -> None:
        self.size, self.path = size, path
        self.outputs: torch.Tensor | None = None
        self.filled = torch.zeros(size, dtype=torch.bool)
        self.saved = False
        if path.is_file():
            self.outputs = torch.load(path, map_location="cpu", weights_only=True)
            self.filled[:] = True
            self.saved = True

    def lookup(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """The cached outputs of ``indices`` on ``device``, or None unless every one is cached."""
        if self.outputs is None or not bool(self.filled.index_select(0, indices).all()):
            return None
        return self.outputs.index_select(0, indices).to(device, non_blocking=True)

    def store(self, indices: torch.Tensor, outputs: Any) -> None:
        """Keep ``outputs`` (a tensor, one row per index); write the file once every item is in."""
        if not isinstance(outputs, torch.Tensor):
            raise TypeError(
                "train.teacher_cache stores one tensor per batch; the soft targets are a "
                f"{type(outputs).__name__}"
            )
        outputs = outputs.detach().to("cpu")
        if self.outputs is None:
            self.outputs = outputs.new_zeros((self.size, *outputs.shape[1:]))
        self.outputs.index_copy_(0, indices, outputs.to(self.outputs.dtype))
        self.filled.index_fill_(0, indices, True)
        if not self.saved and bool(self.filled.all()):
            data = self.outputs
            atomic_write(self.path, lambda fh: torch.save(data, fh))
            self.saved = True
