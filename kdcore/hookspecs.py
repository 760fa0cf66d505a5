"""The plugin contract: every hook kdcore calls, each with what it receives and what it may return.

A plugin is any module or object with functions decorated by :data:`hookimpl`. It is found through the
entry-point group ``kd`` (``[project.entry-points.kd] myplugin = "my_package"``) or registered by hand
on a plugin manager. Read this file and ``examples/kd-plugin-example`` and you know the whole surface.

There are two kinds of hooks.

Registration hooks are called once, when the global plugin manager starts. Each receives a ``register``
callback, so one plugin may register as many things as it likes; kdcore keeps the bookkeeping and
records which plugin registered what.

Distillation hooks are called by the engine during a run. They are dispatched through a *run-scoped*
plugin manager that holds only kdcore's own implementations, the plugin that registered the selected
task, and the plugins the user enabled for this run (``kd train --with NAME``). A liver-CT hook therefore
never fires during a re-ID run. Later-registered plugins are called first, so a task's plugin overrides
kdcore's defaults, and an enabled extra plugin overrides both. Every distillation hook receives ``run``,
a :class:`kdcore.engine.DistillRun` with the stage being trained, the models, the device, the resolved
config, the current step, progress, temperature, alpha and the signals dict.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "kd"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- registration hooks ---------------------------------------------------------------------------


@hookspec
def kd_register_tasks(register):
    """Register the tasks this plugin provides.

    Called once when the plugin manager starts. ``register(task)`` takes a :class:`kdcore.tasks.Task`;
    call it once per task. The task's plugin is recorded automatically; task names need only be unique
    within one plugin (users select ``--plugin NAME --task TASK``). Registering two tasks with the same
    name from one plugin raises an error that marks the plugin broken.
    """


@hookspec
def kd_register_schedules(register):
    """Register schedule types for temperature, alpha and loss weights.

    ``register(name, factory)`` takes the name users write in a config (``{name = "my_schedule", ...}``)
    and a callable, usually a :class:`kdcore.schedules.Schedule` subclass, whose keyword arguments are the
    schedule's parameters. A name already taken raises an error that marks the plugin broken.
    """


@hookspec
def kd_register_losses(register):
    """Register logit-level distillation losses.

    ``register(name, fn)`` takes the name used in ``distill.loss`` and a function
    ``fn(student_outputs, teacher_outputs, temperature) -> Tensor`` returning a scalar loss.
    A name already taken raises an error that marks the plugin broken.
    """


@hookspec
def kd_register_commands(cli):
    """Add sub-commands to the ``kd`` command line.

    ``cli`` is the root :class:`click.Group`; add commands with ``@cli.command()`` or ``cli.add_command``.
    """


# --- distillation hooks (run-scoped) --------------------------------------------------------------


@hookspec
def kd_fit_start(run):
    """Called once per training stage, after the models are built and before the first epoch.

    ``run.stage`` names the stage ("teacher", "assistant1", ..., "student", "baseline"). Return value
    ignored. A plugin may, for example, freeze layers of ``run.student`` or add entries to ``run.signals``.
    """


@hookspec
def kd_fit_end(run, summary):
    """Called once per training stage after the last epoch.

    ``summary`` is a dict with the stage's best metric, epochs run and checkpoint paths; a plugin may add
    keys to it (they land in ``report/summary.json``). Return value ignored.
    """


@hookspec
def kd_epoch_start(run, epoch):
    """Called at the start of every epoch (``epoch`` counts from 0). Return value ignored."""


@hookspec
def kd_epoch_end(run, epoch, metrics):
    """Called at the end of every epoch, after validation, with the epoch's logged ``metrics`` dict.

    A plugin may add entries to ``metrics`` before they are written to ``metrics.jsonl``. In an epoch
    that does not validate (``train.eval_every > 1``) ``metrics`` is ``{"stage", "split": "epoch",
    "epoch", "step", "train_loss"}``; after validation, ``split`` is ``"val"`` and the task's metrics
    are in it.
    """


@hookspec
def kd_step_start(run, step, batch):
    """Called before the forward pass of every training step (``step`` counts from 0 over the stage).

    ``batch`` is what the data loader yielded, already moved to ``run.device``. Return value ignored.
    """


@hookspec
def kd_step_end(run, step, losses):
    """Called after the optimiser step with the step's ``losses``: named terms, "total", "supervised",
    and in distilled stages "temperature" and "alpha".

    The losses are detached 0-dim tensors, still on the device: ``float(losses["total"])`` reads one but
    waits for the device (on a GPU, a sync every step); the engine itself reads them only every
    ``train.log_every`` steps. Return value ignored.
    """


@hookspec(firstresult=True)
def kd_soft_targets(run, inputs, batch):
    """Return the teacher outputs used as soft targets for this batch.

    ``inputs`` are the student's inputs (already on ``run.device``), ``batch`` the whole batch. The first
    non-None result wins. kdcore's default runs ``run.teacher(inputs)`` under ``torch.no_grad()`` in eval
    mode; a plugin overrides this to read a cache, to feed the teacher a different modality than the
    student (sensor transfer), or to combine several teachers. Return the outputs in the form the
    distillation loss expects (usually a logits tensor).
    """


@hookspec(firstresult=True)
def kd_distill_loss(run, student_outputs, teacher_outputs, batch):
    """Return the distillation terms for this batch as a dict ``{name: scalar tensor}``.

    The first non-None result wins. kdcore's default returns ``{"kd": loss(student, teacher, T)}`` with
    the loss named by ``distill.loss`` and the temperature ``run.temperature``, plus one term per
    configured feature hint. The engine combines the terms as
    ``total = (1 - alpha) * supervised + alpha * sum(weight[name] * term)``, where ``weight`` comes from
    ``distill.weights`` (default 1 for each term), so a plugin that returns several named terms gets them
    logged and weighted with no further work.
    """


@hookspec
def kd_after_validation(run, epoch, metrics):
    """Called after each validation pass with the validation ``metrics`` (dict of floats).

    This is where a growing teacher assistant grows, an architecture search updates its choice, or a
    plugin sets ``run.signals[...]`` that a signal-driven schedule reads. Set ``run.stop_requested = True``
    to end the stage early. Return value ignored.
    """


@hookspec
def kd_state_dict(run):
    """Return this plugin's resumable state for the current stage, or None when it keeps none.

    Called after every epoch, when kdcore writes ``checkpoints/resume.pt``. Return a dict with one key of
    your own (your plugin's name, say) mapping to tensors, numbers, strings, lists and dicts only: the
    file is loaded with ``weights_only=True``. An online assistant's weights and optimizer, or the
    generators of random transforms that do not use the global ones, belong here; anything rebuilt
    identically by ``kd_fit_start`` does not.
    """


@hookspec
def kd_load_state_dict(run, state):
    """Restore, in a resumed stage, what ``kd_state_dict`` returned.

    Called once, right after ``kd_fit_start`` of the stage ``kd train --resume`` continues. ``state``
    is the merged dict of every plugin's ``kd_state_dict`` result: take your own key, ignore the rest.
    Return value ignored.
    """
