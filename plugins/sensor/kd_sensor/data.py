"""The task's data: old-sensor images for the teacher, paired captures with few labels for the student.

From :func:`kd_sensor.pairs.load_paired` (``--data PATH``, else the rendered digits):

* **Teacher** (``TaskData.teacher_data``): the old-sensor image of every training pair with its label,
  split by class into 80 % training and 20 % validation (the teacher's checkpoint selection).
* **Student**: the training pairs. Only ``options.labels`` of them (N; 0 means all) are labelled for a
  stage, chosen per class with ``options.label_seed`` (as even as N allows: N = 10 is one per digit);
  the others are unlabelled, and the student learns them from the teacher's soft targets on their
  old-sensor twin (``options.distill_unlabelled``). Validation is the test split: new-sensor images no
  training path sees. Model selection on it would use test labels, so reports quote the final epoch.

Which pairs are labelled is a property of the stage, not of the data set (a run compares several N and
label seeds), so :class:`PairedTrain` shows every pair twice: item ``i < n`` is pair ``i`` with its
label, item ``n + i`` the same pair with the label hidden (``-1``). The batch sampler of a stage
(kdcore's :class:`~kdcore.samplers.FewLabelBatches`, built by :func:`label_budget_sampler`) picks
labelled items from the first half and unlabelled ones from the second. Every stage draws the same
number of batches per epoch whatever N, so recipes and label budgets train for the same number of steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from kd_sensor import HIDDEN
from kd_sensor.pairs import MANIFEST_NAME, PairedSplits, load_image_folder, load_paired
from kdcore import TaskData, data_home
from kdcore.samplers import FewLabelBatches, labelled_share


def read_images(paths: Sequence[Path], what: str) -> torch.Tensor:
    """Images as a float tensor ``(n, C, H, W)`` in [0, 1] (grey images have ``C = 1``); all of one size."""
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if image.mode in ("L", "I", "I;16", "1", "P") else "RGB"))
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(
                f"{path}: {what} image of shape {array.shape} (height, width[, channels]), but {paths[0]} "
                f"is {arrays[0].shape}; the images of one sensor must share size and channels"
            )
        arrays.append(array)
    stacked = np.stack(arrays).astype(np.float32) / 255.0
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked))


class PairedTrain(Dataset):
    """Training pairs, each twice: ``(new, label, old)`` for items ``0..n-1``, ``(new, -1, old)`` after."""

    def __init__(self, new: torch.Tensor, labels: torch.Tensor, old: torch.Tensor) -> None:
        self.new, self.labels, self.old = new, labels, old

    @property
    def pairs(self) -> int:
        """The number of pairs ``n`` (the dataset has ``2 n`` items)."""
        return len(self.labels)

    def __len__(self) -> int:
        return 2 * self.pairs

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pair = index % self.pairs
        label = self.labels[pair] if index < self.pairs else torch.tensor(HIDDEN)
        return self.new[pair], label, self.old[pair]


def choose_labelled(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of ``count`` pairs spread over the classes as evenly as possible (0: every pair)."""
    if count == 0:
        return np.arange(len(labels))
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), count // len(classes))
    per_class[rng.permutation(len(classes))[: count % len(classes)]] += 1
    chosen = []
    for label, want in zip(classes, per_class, strict=True):
        members = np.flatnonzero(labels == label)
        if want > len(members):
            raise ValueError(
                f"options.labels = {count} needs {want} images of class {label}, but the training pairs hold "
                f"{len(members)}"
            )
        chosen.append(rng.choice(members, want, replace=False))
    return np.sort(np.concatenate(chosen))


def label_budget_sampler(labels: np.ndarray):
    """The ``TaskData.train_batch_sampler``: the stage's ``options.labels`` / ``label_seed`` decide which
    pairs are labelled, ``options.distill_unlabelled`` whether the others are in a distilled stage's
    batches (never in a supervised stage's: they would teach it nothing)."""

    def sampler(generator: torch.Generator, config: Mapping[str, Any], distilled: bool) -> FewLabelBatches:
        options, batch_size = config["options"], int(config["data"]["batch_size"])
        labelled = choose_labelled(labels, int(options["labels"]), int(options["label_seed"]))
        per_batch, rest = labelled_share(config)
        unlabelled = np.setdiff1d(np.arange(len(labels)), labelled)
        if not (distilled and options["distill_unlabelled"]):
            unlabelled = unlabelled[:0]
        # The same number of steps whatever the budget and recipe; with every pair labelled, whole
        # batches of them. Unlabelled pairs are read through the hidden-label view (indices + pairs).
        batches = FewLabelBatches.batches_for(len(labels), rest)
        each = batch_size if len(labelled) == len(labels) else per_batch
        return FewLabelBatches(labelled, unlabelled + len(labels), each, rest, batches, generator)

    return sampler


def split_by_class(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split: ``1 - fraction`` of each class, then the rest."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(members) * fraction)
        held.append(members[:cut])
        kept.append(members[cut:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def data_root(config: Mapping[str, Any]) -> Path:
    """``--data PATH``, or the rendered digits under ``$KD_DATA_HOME/sensor`` (written once)."""
    from kd_sensor.render import RENDER_VERSION, write_default_set

    if config["data"]["path"]:
        return Path(config["data"]["path"])
    options = config["options"]
    seed, fraction = int(options["render_seed"]), float(options["test_fraction"])
    root = data_home() / "sensor" / f"digits-v{RENDER_VERSION}-seed{seed}-test{fraction:g}"
    return write_default_set(root, seed=seed, test_fraction=fraction)


def build_task_data(config: Mapping[str, Any]) -> TaskData:
    """The teacher's old-sensor images and the student's paired training set and new-sensor test set."""
    splits: PairedSplits = load_paired(data_root(config))
    labels = np.array([s.label for s in splits.train])
    new = read_images([s.new for s in splits.train], "new-sensor")
    old = read_images([s.old for s in splits.train], "old-sensor")
    test = read_images([s.new for s in splits.test], "new-sensor")
    if test.shape[1:] != new.shape[1:]:
        raise ValueError(
            f"{splits.test[0].new}: test images are {tuple(test.shape[1:])} (channels, height, width) "
            f"but the training new-sensor images are {tuple(new.shape[1:])}"
        )
    classes = list(splits.classes)
    fit, held = split_by_class(labels, 0.2, int(config["seed"]))
    targets = torch.as_tensor(labels)
    teacher = TaskData(
        train=TensorDataset(old[fit], targets[fit]),
        val=TensorDataset(old[held], targets[held]),
        info=_info("old", old, classes),
        deterministic_train=True,
    )
    test_labels = torch.as_tensor([s.label for s in splits.test])
    return TaskData(
        train=PairedTrain(new, targets, old),
        val=TensorDataset(test, test_labels),
        info=_info("new", new, classes),
        deterministic_train=True,
        soft_targets_per_item=True,  # the teacher on each item's old twin: cacheable (train.teacher_cache)
        train_batch_sampler=label_budget_sampler(labels),
        teacher_data=teacher,
    )


def _info(sensor: str, images: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """What a model for ``sensor``'s images needs, and what ``kd eval --data`` checks new images against."""
    channels, height, width = images.shape[1:]
    return {
        "sensor": sensor,
        "in_channels": int(channels),
        "image_size": [int(height), int(width)],
        "num_classes": len(classes),
        "classes": classes,
    }


def build_eval_data(config: Mapping[str, Any], info: Mapping[str, Any]) -> TensorDataset:
    """``kd eval RUN_DIR --data PATH``: labelled images of the checkpoint's sensor, with its class names.

    ``PATH`` is a paired data folder (its test split: the new-sensor images for a student, their old-sensor
    twins for the teacher) or a bare folder ``PATH/<class>/<image>`` of the checkpoint's sensor. Its class
    names must be among the model's; the images must have the size and channels the model trained on.
    """
    root = Path(config["data"]["path"])
    sensor, classes = str(info.get("sensor", "new")), [str(name) for name in info["classes"]]
    if (root / MANIFEST_NAME).is_file() or (root / "train").is_dir():
        paths, labels = _paired_test_split(load_paired(root), sensor, classes)
    else:
        samples = load_image_folder(root, classes)
        paths, labels = [s.new for s in samples], [s.label for s in samples]
    images = read_images(paths, f"{sensor}-sensor")
    found = (int(images.shape[1]), [int(images.shape[2]), int(images.shape[3])])
    expected = (int(info["in_channels"]), list(info.get("image_size", found[1])))
    if found != expected:
        raise ValueError(
            f"{paths[0]}: {sensor}-sensor images with {found[0]} channel(s) of {found[1][0]}x{found[1][1]} "
            f"pixels, but the model was trained on {expected[0]} channel(s) of {expected[1][0]}x"
            f"{expected[1][1]}; give it images of the sensor it was trained on"
        )
    return TensorDataset(images, torch.as_tensor(labels))


def _paired_test_split(splits: PairedSplits, sensor: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    """The test split's images of ``sensor`` and their labels in the model's class order."""
    unknown = sorted(set(splits.classes) - set(classes))
    if unknown:
        raise ValueError(f"{splits.root}: classes {unknown} are not among the model's classes {classes}")
    index = {name: i for i, name in enumerate(classes)}
    if sensor == "old":
        missing = [s.new for s in splits.test if s.old is None]
        if missing:
            raise ValueError(
                f"{missing[0]}: a test image without its old-sensor twin ({len(missing)} in all); the "
                "teacher is scored on old-sensor images: add test/old/ (or the test rows' old_path)"
            )
    paths = [s.new if sensor == "new" else s.old for s in splits.test]
    return paths, [index[splits.classes[s.label]] for s in splits.test]
