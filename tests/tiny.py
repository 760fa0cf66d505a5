"""A task small enough that a whole fit takes about a second: 60 points in the plane, 3 classes.

Shared by the tests that need a real run around a hook or a plugin (``from tiny import tiny_task``).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdcore import Task, TaskData, hookimpl
from kdcore.config import merge
from kdcore.plugins import DEFAULT_PLUGINS, Registry

#: 45 training points in batches of 15: 3 steps per epoch; 2 epochs per stage.
DEFAULTS: dict[str, Any] = {
    "device": "cpu",
    "teacher": {"arch": "mlp", "epochs": 2, "lr": 0.05},
    "student": {"arch": "linear", "epochs": 2, "lr": 0.05},
    "data": {"batch_size": 15},
    "train": {"progress": False, "log_every": 1},
}


def tiny_data(config: Mapping[str, Any]) -> TaskData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 2, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return TaskData(train=TensorDataset(x[:45], y[:45]), val=TensorDataset(x[45:], y[45:]), info={})


def tiny_model(arch: str, info: Mapping[str, Any], config: Mapping[str, Any]) -> nn.Module:
    if arch == "linear":
        return nn.Linear(2, 3)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))


def tiny_task(name: str = "tiny", **defaults: Any) -> Task:
    """The tiny task called ``name``; ``defaults`` (tables by section) are merged over :data:`DEFAULTS`."""
    return Task(
        name=name,
        description="tiny test task",
        build_data=tiny_data,
        build_model=tiny_model,
        architectures=("linear", "mlp"),
        defaults=merge(DEFAULTS, defaults),
    )


def plugin_registry(monkeypatch, name: str, tasks: Sequence[Task], *hooks: Callable) -> Registry:
    """kdcore's default plugins plus a test plugin module ``name`` that registers ``tasks`` and
    implements ``hooks`` (functions decorated with ``hookimpl``, named after the hook)."""
    module = types.ModuleType(name)

    @hookimpl
    def kd_register_tasks(register):
        for task in tasks:
            register(task)

    for hook in (kd_register_tasks, *hooks):
        setattr(module, hook.__name__, hook)
    monkeypatch.setitem(sys.modules, name, module)
    registry = Registry(builtins=(*DEFAULT_PLUGINS, name), load_entry_points=False)
    assert not registry.plugins[name].broken, registry.plugins[name].error
    return registry
