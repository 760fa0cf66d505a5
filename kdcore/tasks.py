"""Task: what a plugin registers — how to build the data and the models, and how to score a model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore.lazy import lazy

if TYPE_CHECKING:  # torch is imported when a task is used, not when a plugin registers it
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset


#: ``TaskData.train_batch_sampler``: ``(generator, config, distilled)`` to a stage's batches of indices.
BatchSamplerFactory = Callable[["torch.Generator", Mapping[str, Any], bool], Iterable[list[int]]]


def data_home() -> Path:
    """Where plugins write their embedded default data sets: ``$KD_DATA_HOME``, else ``~/.cache/kd``.

    A plugin keeps its own sub-folder (``data_home() / "liverct"``) and writes there atomically once.
    """
    return Path(os.environ.get("KD_DATA_HOME") or Path.home() / ".cache" / "kd")


@dataclass(frozen=True)
class TaskData:
    """The data a task hands to the engine.

    Args:
        train: the training set; items are whatever ``Task.split_batch`` understands once collated.
        val: the validation set used for model selection (best checkpoint) and for ``kd eval``.
        info: facts the model builders need, e.g. ``{"num_classes": 10, "in_channels": 1}``. Plain
            numbers, strings and lists only: it is stored in every checkpoint.
        collate_fn: optional collate function for both loaders.
        deterministic_train: True when ``train[i]`` is the same every time it is read (no random
            augmentation): the engine may then cache the teacher's outputs by item (``train.teacher_cache``).
        train_batch_sampler: optional ``train_batch_sampler(generator, config, distilled)`` returning a
            stage's training batches as lists of indices into ``train`` (an iterable with ``len``), e.g. P
            identities x K images each for a triplet loss. ``config`` is the stage's configuration (its
            ``data.batch_size``, the task's ``options``: a search stage may hold some items out).
            ``distilled`` is True for a stage that learns from a teacher and False for a supervised one
            (a teacher, the no-KD baseline): items without a label teach a supervised stage nothing, so
            its sampler may leave them out (keeping the number of batches, so that both stages take the
            same steps). It must draw its randomness from ``generator`` (seeded by the run and saved for
            ``--resume``) when iterated. ``None``: shuffled batches of ``data.batch_size``.
        soft_targets_per_item: True when the task plugin's own ``kd_soft_targets`` gives each training
            item the same targets every time (the teacher applied to another view of the item, such as
            the old-sensor twin of an image): ``train.teacher_cache`` may then store them like the
            teacher's plain outputs. Another plugin's ``kd_soft_targets`` still refuses the cache.
        teacher_data: the teacher's own data, when it learns from another data set or sensor than the
            student (a matcher trained on a source table, a network trained on the old camera): the
            teacher stages train and validate on ``teacher_data.train`` / ``.val`` with its sampler and
            build their models with its ``info``; distilled stages and the baseline use this object.
            The teacher still teaches on the student's training items (``kd_soft_targets`` may hand it
            another view of them). ``None``: the teacher shares the student's data.
    """

    train: Dataset
    val: Dataset
    info: Mapping[str, Any] = field(default_factory=dict)
    collate_fn: Callable[[list[Any]], Any] | None = None
    deterministic_train: bool = False
    train_batch_sampler: BatchSamplerFactory | None = None
    soft_targets_per_item: bool = False
    teacher_data: TaskData | None = None

    def for_stage(self, is_teacher: bool) -> TaskData:
        """The data a stage trains and validates on: ``teacher_data`` for a teacher stage when set."""
        return self.teacher_data if is_teacher and self.teacher_data is not None else self


#: The default hard-label loss: PyTorch's ``cross_entropy``, the mean over the batch (imported on first
#: use). Targets equal to -100 are ignored, and a batch whose every target is -100 gives NaN; a task with
#: unlabelled items uses :func:`kdcore.losses.hard_label_ce`, which gives 0 there, at the price of four
#: more operations a step (a 3 % slower step for a small model, BENCHMARKS.md).
CROSS_ENTROPY = lazy("torch.nn.functional:cross_entropy")


def split_input_target(batch: Any) -> tuple[Any, Any]:
    """Default batch layout: ``(inputs, targets)`` — what torchvision datasets and TensorDataset yield."""
    inputs, targets = batch[0], batch[1]
    return inputs, targets


def evaluate_accuracy(
    model: nn.Module, loader: DataLoader, device: torch.device, config: Mapping[str, Any]
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of a classifier over ``loader`` (``config`` is not needed).

    The per-batch sums stay on the device and are read back at the end (not two host syncs a batch)."""
    import torch

    model.eval()
    losses: list[torch.Tensor] = []  # per batch: the summed cross-entropy
    hits: list[torch.Tensor] = []  # per batch: the count of correct predictions
    total = 0
    with torch.no_grad():
        for batch in loader:
            inputs, targets = split_input_target(batch)
            inputs, targets = inputs.to(device), targets.to(device)
            logits = model(inputs)
            losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            hits.append((logits.argmax(dim=1) == targets).sum())
            total += targets.numel()
    if total == 0:
        raise ValueError("the validation set is empty: nothing to evaluate")
    loss_sum, correct = sum(torch.stack(losses).tolist()), sum(torch.stack(hits).tolist())
    return {"accuracy": correct / total, "loss": loss_sum / total}


@dataclass(frozen=True)
class Task:
    """A distillation task a plugin registers with ``kd_register_tasks``.

    The core knows nothing of the domain: everything domain-specific enters through these fields. Each
    function may be a :func:`kdcore.lazy` reference (``lazy("kd_sensor.data:build_task_data")``), imported
    when the task is first used: the plugin's entry module then needs no torch, and ``kd plugins``,
    ``kd tasks`` and ``kd --help`` answer at once.

    Args:
        name: the task's name, unique within its plugin (``kd train --plugin P --task NAME``).
        description: one line for ``kd tasks``.
        build_data: ``build_data(config) -> TaskData``; ``config`` is the resolved run configuration (a
            nested dict). ``config["data"]["path"]`` is the user's ``--data PATH``, or ``""`` for the
            task's embedded default data set.
        build_model: ``build_model(arch, info, config) -> nn.Module`` for an architecture name from
            ``architectures``; ``info`` is ``TaskData.info``.
        architectures: the architecture names ``build_model`` accepts (checked before any training).
        defaults: the task's default configuration, merged over kdcore's defaults. Keys under
            ``options`` are the task's own settings; any other key must be one of kdcore's.
        evaluate: ``evaluate(model, loader, device, config) -> {metric: float}``; must include
            ``main_metric``. ``config`` is the run's resolved configuration (for options such as a
            sliding-window size).
        main_metric: the metric that picks the best checkpoint.
        higher_is_better: whether a larger ``main_metric`` is better.
        supervised_loss: ``supervised_loss(outputs, targets) -> Tensor``, the hard-label loss
            (default: PyTorch's ``cross_entropy``, :data:`CROSS_ENTROPY`; a task whose batches may hold
            only unlabelled items uses :func:`kdcore.losses.hard_label_ce`).
        split_batch: ``split_batch(batch) -> (inputs, targets)``.
        build_eval_data: optional ``build_eval_data(config, info) -> Dataset``: the labelled data at
            ``kd eval --data PATH`` (``config["data"]["path"]``) for a checkpoint whose ``TaskData.info``
            is ``info``, batched with PyTorch's default collate. For data that is not a whole training
            set, such as a folder of new images with the run's class names, read with the checkpoint's
            class list and input shape. ``None``: ``kd eval --data`` builds the whole data set with
            ``build_data`` and scores its ``val``.
        plugin: set by kdcore to the name of the plugin that registered the task.

    Example::

        Task(name="digits", description="...", build_data=load_digits, build_model=make_cnn,
             architectures=("cnn_small", "cnn_large"), defaults={"teacher": {"arch": "cnn_large"}})
    """

    name: str
    description: str
    build_data: Callable[[Mapping[str, Any]], TaskData]
    build_model: Callable[[str, Mapping[str, Any], Mapping[str, Any]], nn.Module]
    architectures: Sequence[str]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    evaluate: Callable[[nn.Module, DataLoader, torch.device, Mapping[str, Any]], dict[str, float]] = (
        evaluate_accuracy
    )
    main_metric: str = "accuracy"
    higher_is_better: bool = True
    supervised_loss: Callable[[Any, Any], torch.Tensor] = CROSS_ENTROPY
    split_batch: Callable[[Any], tuple[Any, Any]] = split_input_target
    build_eval_data: Callable[[Mapping[str, Any], Mapping[str, Any]], Dataset] | None = None
    plugin: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"task name {self.name!r} must be non-empty letters, digits, '-' or '_'")
        if not self.architectures:
            raise ValueError(f"task {self.name!r} lists no architectures")
