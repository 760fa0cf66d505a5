"""kdcore's own plugin: the built-in schedules and losses, and the default distillation hooks.

It is registered like any other plugin, first, so every plugin can override its distillation hooks.
"""

from __future__ import annotations

from kdcore.hookspecs import hookimpl


@hookimpl
def kd_register_schedules(register):
    from kdcore.schedules import BUILTIN_SCHEDULES

    for name, factory in BUILTIN_SCHEDULES.items():
        register(name, factory)


@hookimpl
def kd_register_losses(register):
    from kdcore.losses import BUILTIN_LOSSES

    for name, fn in BUILTIN_LOSSES.items():
        register(name, fn)


@hookimpl(trylast=True)
def kd_soft_targets(run, inputs, batch):
    """The teacher's outputs for ``inputs``, computed without gradients in eval mode."""
    import torch

    with torch.no_grad():
        return run.teacher(inputs)


@hookimpl(trylast=True)
def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
    """``{"kd": distill.loss(student, teacher, T)}`` plus one term per ``distill.hints`` entry."""
    terms = {"kd": run.kd_loss(student_outputs, teacher_outputs, run.temperature)}
    if run.hints is not None:
        terms.update(run.hints.compute())
    return terms
