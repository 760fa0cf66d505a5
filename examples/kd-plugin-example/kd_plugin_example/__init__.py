"""kd-plugin-example: the template for a third-party kdcore plugin.

kdcore finds this module through the entry point ``[project.entry-points.kd] example =
"kd_plugin_example"`` in ``pyproject.toml`` and registers it with its plugin manager. Every function
decorated with :data:`kdcore.hookimpl` whose name is a hook of ``kdcore/hookspecs.py`` is then called:

* :func:`kd_register_tasks` (a registration hook, called once at start-up) registers the task ``toy``;
* :func:`kd_epoch_end` (a distillation hook, called during runs of this plugin's tasks) adds a metric.

Copy this package, rename it, and replace the data and models with your domain's.
"""

from __future__ import annotations

from typing import Any

from kdcore import Task, hookimpl, lazy

__version__ = "0.1.0"

#: The architecture names ``models.build_model`` accepts (the keys of ``models.HIDDEN``).
ARCHITECTURES = ("mlp_teacher", "mlp_student")

#: Defaults merged over kdcore's (see ``kd train --plugin example --dry-run``); small enough that a run
#: takes a few seconds on a CPU. Users override any key with ``--set`` or a TOML config file.
DEFAULTS: dict[str, Any] = {
    "device": "cpu",
    "data": {"batch_size": 32},
    "teacher": {"arch": "mlp_teacher", "epochs": 30, "lr": 1e-2},
    "student": {"arch": "mlp_student", "epochs": 30, "lr": 2e-2},
    "distill": {
        "temperature": {"name": "constant", "value": 2.0},
        "alpha": {"name": "constant", "value": 0.7},
    },
    "train": {"log_every": 5},
}

TOY = Task(
    name="toy",
    description="Toy 2-D classification: three interleaved spirals, MLP teacher -> tiny MLP student",
    # lazy("module:function"): imported when a run starts, so that this module needs no torch and
    # `kd plugins` / `kd --help` stay instant however many plugins are installed. (__name__ is this
    # package: a renamed copy needs no edit here.)
    build_data=lazy(f"{__name__}.data:build_data"),
    build_model=lazy(f"{__name__}.models:build_model"),
    architectures=ARCHITECTURES,
    defaults=DEFAULTS,
)


@hookimpl
def kd_register_tasks(register):
    """Register this plugin's tasks (here only ``toy``); call ``register`` once per task."""
    register(TOY)


@hookimpl
def kd_epoch_end(run, epoch, metrics):
    """Log the distillation temperature with every validation record of a distilled stage.

    ``metrics`` is the record about to be written to ``metrics.jsonl``; anything added here lands there.
    Supervised stages (the teacher, the no-KD baseline) have no temperature, so they are left alone.
    """
    if run.distilling:
        metrics["example_temperature"] = float(run.temperature)
