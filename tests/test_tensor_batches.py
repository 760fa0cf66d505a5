"""Tensor data sets gathered a batch at a time: the same batches as item by item, in loaders and in fit."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from rich.console import Console
from tiny import plugin_registry, tiny_data, tiny_task
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from kdcore.checkpoint import load_checkpoint
from kdcore.config import resolve
from kdcore.engine import fit
from kdcore.teacher_cache import IndexedDataset, indexed_collate
from kdcore.tensor_batches import TensorBatches, collate

IMAGES = torch.randn(50, 1, 3, 3, generator=torch.Generator().manual_seed(1))
LABELS = torch.arange(50) % 7


def shuffled(dataset, collate_fn, **options):
    generator = torch.Generator().manual_seed(3)
    loader = DataLoader(
        dataset, batch_size=8, shuffle=True, generator=generator, collate_fn=collate_fn, **options
    )
    return [batch for _ in range(2) for batch in loader]  # two epochs: the generator moves on


def assert_same_batches(expected, got):
    assert len(got) == len(expected)
    for want, batch in zip(expected, got, strict=True):
        assert type(batch) is type(want)
        assert len(batch) == len(want)
        for a, b in zip(want, batch, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "dataset",
    [
        TensorDataset(IMAGES, LABELS),
        Subset(TensorDataset(IMAGES, LABELS), [4, 9, 0, 33, 2, 17, 48, 5, 21, 30, 11]),
    ],
    ids=["tensors", "subset"],
)
def test_gathered_batches_are_default_collates_to_the_bit(dataset):
    gathered = TensorBatches.of(dataset)
    assert gathered is not None and len(gathered) == len(dataset)
    assert_same_batches(shuffled(dataset, None), shuffled(gathered, collate))
    index = len(dataset) - 1
    assert all(torch.equal(a, b) for a, b in zip(gathered[index], dataset[index], strict=True))


def test_the_gather_is_index_select_not_advanced_indexing():
    """``tensor[rows]`` runs a parallel region even for a small batch on a many-core host, which leaves the
    OpenMP workers spinning between steps (BENCHMARKS.md, session 22); the gather must not use it."""
    gathered = TensorBatches.of(Subset(TensorDataset(IMAGES, LABELS), list(range(40))))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        gathered.__getitems__([5, 1, 30, 7])
    names = {event.name for event in profile.events()}
    assert "aten::index_select" in names
    assert "aten::index" not in names


def test_indexed_batches_match_the_indexed_dataset():
    dataset = Subset(TensorDataset(IMAGES, LABELS), list(range(3, 40, 2)))
    expected = shuffled(IndexedDataset(dataset), indexed_collate(None))
    got = shuffled(TensorBatches.of(dataset, indexed=True), collate)
    for (want_indices, want), (indices, batch) in zip(expected, got, strict=True):
        assert torch.equal(indices, want_indices) and indices.dtype == torch.long
        assert_same_batches([want], [batch])
    assert TensorBatches.of(dataset, indexed=True)[2][0] == 2


def test_worker_processes_get_the_same_batches():
    dataset = TensorDataset(IMAGES, LABELS)
    assert_same_batches(shuffled(dataset, None), shuffled(TensorBatches.of(dataset), collate, num_workers=1))


class Flipped(TensorDataset):
    def __getitem__(self, index):
        image, label = super().__getitem__(index)
        return image.flip(-1), label


class Items(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


@pytest.mark.parametrize(
    "dataset",
    [
        Flipped(IMAGES, LABELS),
        Items(TensorDataset(IMAGES, LABELS)),
        Subset(Items(IMAGES), [0, 1]),
        [IMAGES[0]],
    ],
    ids=["own-getitem", "other-dataset", "subset-of-other", "list"],
)
def test_data_sets_that_decide_their_items_are_left_alone(dataset):
    assert TensorBatches.of(dataset) is None


def item_by_item(config):
    """The tiny task's data in a data set that is no TensorDataset: loaded item by item and stacked."""
    data = tiny_data(config)
    return dataclasses.replace(data, train=Items(data.train), val=Items(data.val), deterministic_train=True)


def cached_tiny(config):
    return dataclasses.replace(tiny_data(config), deterministic_train=True)


@pytest.mark.parametrize("teacher_cache", [False, True], ids=["live-teacher", "teacher-cache"])
def test_fit_trains_the_same_student_as_with_items_loaded_one_by_one(tmp_path, monkeypatch, teacher_cache):
    tasks = [
        dataclasses.replace(tiny_task("gathered", student={"epochs": 3}), build_data=cached_tiny),
        dataclasses.replace(tiny_task("items", student={"epochs": 3}), build_data=item_by_item),
    ]
    registry = plugin_registry(monkeypatch, "kdt_batches", tasks)
    gathers = []
    gather = TensorBatches.__getitems__
    monkeypatch.setattr(
        TensorBatches, "__getitems__", lambda self, indices: gathers.append(1) or gather(self, indices)
    )
    weights, losses, fetched = {}, {}, {}
    for task in tasks:
        overrides = {
            "plugin": "kdt_batches",
            "task": task.name,
            "out_dir": str(tmp_path),
            "run_name": task.name,
        }
        sets = [f"train.teacher_cache={str(teacher_cache).lower()}", "distill.baseline=false"]
        result = fit(
            resolve(task.defaults, sets=sets, overrides=overrides),
            registry,
            console=Console(file=io.StringIO()),
        )
        weights[task.name] = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")["model"]
        losses[task.name] = result.summary["stages"]["student"]["final_metric"]
        fetched[task.name] = len(gathers)
    # the tensor data's batches were gathered (the student's alone: 3 epochs of 3 batches and a validation),
    # the other data set's were not
    assert fetched["gathered"] >= 3 * (3 + 1) and fetched["items"] == fetched["gathered"]
    assert weights["gathered"].keys() == weights["items"].keys()
    for name, tensor in weights["gathered"].items():
        assert torch.equal(tensor, weights["items"][name]), name
    assert losses["gathered"] == losses["items"]
