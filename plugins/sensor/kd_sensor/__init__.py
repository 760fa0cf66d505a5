"""kd-sensor: sensor-modality transfer with few images of the new sensor.

Registers the task ``sensor/transfer`` with kdcore (entry point ``sensor`` in the group ``kd``). After Van
Molle et al. (*Sensors* 2021): a teacher trained on plenty of labelled old-sensor images (an RGB camera)
teaches a student that sees the new sensor (thermal) from only N labelled images, through paired
captures: the teacher's soft targets on the old-sensor twin of each new-sensor image. Data: a paired
folder or manifest (``--data PATH``, :mod:`kd_sensor.pairs`), else scikit-learn's digits rendered as the two
sensors (:mod:`kd_sensor.render`), written once under ``$KD_DATA_HOME/sensor``.

One ``kd train --plugin sensor`` trains the teacher once, then one student per recipe, label budget N
and label seed (the run's variants, named ``n10_s0_kd``): no KD, KD, KD with an annealed alpha and
selective KD, at N = 10, 50, 100 (three label seeds each) and every label.
"""

from __future__ import annotations

from typing import Any

from kd_sensor.models import WIDTHS, build_model
from kd_sensor.report import variant_name
from kdcore import Task, hookimpl, lazy

__version__ = "0.1.0"

#: The label of a training pair whose label the stage does not use (no cross-entropy on it).
HIDDEN = -1

#: The label budgets and seeds of the sweep (N = 0: every label); more than one seed where N is small.
SWEEP: dict[int, int] = {10: 3, 50: 3, 100: 3, 0: 1}

#: What each recipe changes (``alpha`` weighs the KD term: total = (1 - alpha) CE + alpha KD).
RECIPES: dict[str, dict[str, Any]] = {
    "no_kd": {"distill": {"alpha": 0.0}},
    "kd": {},
    "kd_anneal": {"distill": {"alpha": {"name": "linear", "start": 1.0, "end": 0.5}}},
    "kd_selective": {"options": {"selective": True}},
}


def sweep_variants(sweep: dict[int, int] = SWEEP) -> dict[str, Any]:
    """One variant per label budget, label seed and recipe."""
    variants = {}
    for labels, seeds in sweep.items():
        for seed in range(seeds):
            for recipe, change in RECIPES.items():
                options = {**change.get("options", {}), "labels": labels, "label_seed": seed}
                variants[variant_name(labels, seed, recipe)] = {**change, "options": options}
    return variants


#: Learning rates decay to 5 % along a half cosine: the last epoch's model is the one reported.
COSINE = {"name": "cosine", "start": 1.0, "end": 0.05}

#: The CPU default, a few minutes on 2 cores: 40 small students of 15 epochs from one teacher.
DEFAULTS: dict[str, Any] = {
    "teacher": {"arch": "cnn_large", "epochs": 15, "lr": 3e-3, "weight_decay": 5e-4, "lr_schedule": COSINE},
    "student": {"arch": "cnn_small", "epochs": 15, "lr": 3e-3, "weight_decay": 5e-4, "lr_schedule": COSINE},
    "data": {"batch_size": 64, "eval_batch_size": 512},
    "distill": {
        "loss": "soft_target_kl",
        "temperature": {"name": "constant", "value": 4.0},
        "alpha": {"name": "constant", "value": 0.75},
        "baseline": False,  # the no-KD students are variants: one per label budget and seed
    },
    "train": {"log_every": 20, "eval_every": 5, "teacher_cache": True},  # the teacher runs once per item
    "variants": sweep_variants(),
    "primary_variant": variant_name(10, 0, "kd_anneal"),
    "options": {
        "labels": 10,  # labelled new-sensor images, spread over the classes; 0: all
        "label_seed": 0,
        "labelled_per_batch": 8,
        "distill_unlabelled": True,  # the unlabelled pairs learn from the teacher too
        "selective": False,  # distil only the samples the teacher gets right (see kd_distill_loss)
        "confidence": 0.8,  # selective KD: the teacher's top probability at T = 1 must reach this
        "render_seed": 0,
        "test_fraction": 0.3,
    },
}


TRANSFER = Task(
    name="transfer",
    description="old-sensor teacher -> new-sensor student from few paired images (digits RGB -> thermal)",
    build_data=lazy("kd_sensor.data:build_task_data"),  # torch is imported when a run starts
    build_model=build_model,
    architectures=tuple(WIDTHS),
    defaults=DEFAULTS,
    supervised_loss=lazy("kdcore.losses:hard_label_ce", ignore_index=HIDDEN),  # unlabelled items: no CE
    build_eval_data=lazy("kd_sensor.data:build_eval_data"),  # kd eval --data: test split or FOLDER/<class>/
)


@hookimpl
def kd_register_tasks(register):
    """Register the ``transfer`` task."""
    register(TRANSFER)


@hookimpl
def kd_soft_targets(run, inputs, batch):
    """The teacher sees the old-sensor twin of each new-sensor image (the batch's third element)."""
    import torch

    with torch.no_grad():
        return run.teacher(batch[2])


@hookimpl
def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
    """Selective KD (``options.selective``): distil only the samples whose teacher prediction is
    confident (top probability at T = 1 of at least ``options.confidence``) and, where the label is
    known, correct. The KL is averaged over the whole batch, so distilling fewer samples weighs less;
    with none selected the term is 0. Without ``selective``, kdcore's default term."""
    if not run.config["options"]["selective"]:
        return None
    from kdcore.losses import soft_target_kl

    probabilities = teacher_outputs.detach().softmax(dim=1)
    confidence, predicted = probabilities.max(dim=1)
    labels = batch[1]
    chosen = (confidence >= float(run.config["options"]["confidence"])) & (
        (labels == HIDDEN) | (predicted == labels)
    )
    run.signals["selected"] = float(chosen.float().mean())
    if not bool(chosen.any()):
        return {"kd": student_outputs.sum() * 0.0}
    kl = soft_target_kl(student_outputs[chosen], teacher_outputs[chosen], run.temperature)
    return {"kd": kl * chosen.float().mean()}


@hookimpl
def kd_fit_end(run, summary):
    """Record a student's final test accuracy; once every variant has one, write the table and plot."""
    from rich.console import Console

    from kd_sensor import report

    if not run.dist.is_main or not run.variant or run.stage != "student":
        return
    recipe = run.variant.split("_", 2)[2] if run.variant.count("_") >= 2 else run.variant
    report.record(run.run_dir, run.variant, run.config["options"], recipe, summary["final_metric"])
    if report.complete(run.run_dir):
        report.write(run.run_dir, Console())
