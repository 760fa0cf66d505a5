"""GTAN: a growing teacher assistant, trained alongside the student and driven by kdcore hooks.

Xu et al. (2021) bridge the gap between a large 3-D teacher and a tiny student with an assistant that
"gradually learns the teacher's knowledge", at no extra computational cost. The growth rule is not in
what we could read of the paper, so this is our design:

* **Where.** The assistant lives in the *student's* stage (``distill.strategy = "offline"`` with
  ``options.gtan = true``). There is no separate assistant stage, unlike TAKD (Mirzadeh et al., 2020),
  which trains the assistant fully before the student starts. The assistant still costs one forward and
  backward pass per student step, about what TAKD's assistant stage costs; what GTAN saves is a
  stage in sequence (and the assistant starts small, so its first steps are cheaper in principle; the
  channel masks here do not skip the masked work).
* **What each step does.** ``kd_soft_targets`` runs the frozen teacher, takes one optimiser step of the
  assistant on ``(1 - a) * (Dice + CE) + a * KD(teacher -> assistant, T)`` (KD: ``distill.loss``; ``a``:
  ``options.gtan_alpha``, default 0.9, so the assistant mostly mimics the teacher), and returns the
  assistant's logits (detached) as the student's soft targets. The student therefore always learns from
  a model only somewhat larger than itself.
* **How it grows.** The assistant is a :class:`~kd_liverct.models.GrowingUNet` at the width of
  ``unet_assistant``. Its active width starts at ``options.gtan_start`` (default 0.7: 7-14-28-56
  channels, the ``unet_100k`` student's) and rises along a kdcore piecewise-linear schedule to 1.0
  (10-20-40-80) at ``options.gtan_grow_until`` of the stage (default 0.6), then stays. Each step,
  ``kd_step_start`` sets the width from the schedule. New channels fade in continuously (see
  ``GrowingUNet``), and every trained weight is kept as the assistant grows.
* **Why.** Early in training the student is weak; a teacher far above it gives targets it cannot follow
  (the capacity gap TAKD addresses). An assistant of the student's own size is easy to follow, and as
  the assistant widens it absorbs more of the teacher, so the targets improve as the student does.

The active width is logged as the signal ``assistant_width`` (drawn in ``report/signals.png``), the
assistant's active parameter count is added to each validation record, and the assistant is saved to
``checkpoints/gtan_assistant.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kd_liverct.architectures import ARCHITECTURES, GTAN_ARCH
from kd_liverct.models import GrowingUNet
from kdcore.checkpoint import save_checkpoint
from kdcore.schedules import Piecewise, Schedule

STATE_KEY = "liverct.gtan"


@dataclass
class GtanState:
    """The assistant of one student stage, its optimiser and its width schedule."""

    assistant: GrowingUNet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    width: Schedule


def width_schedule(start: float, grow_until: float) -> Schedule:
    """Active width over the stage's progress: linear from ``start`` to 1 by ``grow_until``, then 1."""
    if not 0.0 < start <= 1.0:
        raise ValueError(f"options.gtan_start must be in (0, 1], got {start}")
    if not 0.0 < grow_until <= 1.0:
        raise ValueError(f"options.gtan_grow_until must be in (0, 1], got {grow_until}")
    return Piecewise([[0.0, start], [grow_until, 1.0]])


def active(run: Any) -> GtanState | None:
    """The GTAN state of this run's current stage, or None when GTAN does not apply to it."""
    return run.plugin_state.get(STATE_KEY) if run.stage == "student" and run.distilling else None


def start(run: Any) -> None:
    """Build the assistant at its starting width for the student stage (called from ``kd_fit_start``)."""
    options = run.config["options"]
    run.plugin_state.pop(STATE_KEY, None)
    if not (options["gtan"] and run.stage == "student" and run.distilling):
        return
    torch.manual_seed(run.config["seed"])
    info = run.data.info
    assistant = GrowingUNet(
        ARCHITECTURES[GTAN_ARCH], info["in_channels"], info["num_classes"], min_width=options["gtan_start"]
    ).to(run.device)
    section = run.config["student"]
    optimizer = torch.optim.Adam(
        assistant.parameters(), lr=section["lr"], weight_decay=section["weight_decay"]
    )
    scaler = torch.amp.GradScaler("cuda", enabled=run.grad_scaling)
    schedule = width_schedule(options["gtan_start"], options["gtan_grow_until"])
    run.plugin_state[STATE_KEY] = GtanState(assistant, optimizer, scaler, schedule)


def grow(run: Any) -> None:
    """Set the assistant's width for the current step (called from ``kd_step_start``)."""
    state = active(run)
    if state is None:
        return
    state.assistant.set_width(float(state.width(run.progress)))
    run.signals["assistant_width"] = float(state.assistant.width)


def soft_targets(run: Any, inputs: torch.Tensor, batch: Any) -> torch.Tensor | None:
    """Train the assistant one step on teacher + labels; return its logits as the student's targets."""
    state = active(run)
    if state is None:
        return None
    with torch.no_grad():
        teacher_logits = run.teacher(inputs)
    _, labels = run.task.split_batch(batch)
    assistant = state.assistant.train()
    with torch.enable_grad():
        logits = assistant(inputs)
        supervised = run.task.supervised_loss(logits, labels)
        distill = run.kd_loss(logits, teacher_logits, run.temperature)
        alpha = float(run.config["options"]["gtan_alpha"])
        loss = (1.0 - alpha) * supervised + alpha * distill
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return logits.detach()


def state_dict(run: Any) -> dict[str, Any] | None:
    """The assistant, its optimiser and scaler, for ``kd train --resume`` (None outside a GTAN stage)."""
    state = active(run)
    if state is None:
        return None
    return {
        "assistant": state.assistant.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
    }


def load_state_dict(run: Any, saved: dict[str, Any]) -> None:
    """Restore what :func:`state_dict` saved into the assistant that ``start`` built."""
    state = active(run)
    if state is None:
        raise ValueError("the resumed stage saved a GTAN assistant, but GTAN is not active in it")
    state.assistant.load_state_dict(saved["assistant"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scaler.load_state_dict(saved["scaler"])


def describe(run: Any, record: dict[str, Any]) -> None:
    """Add the assistant's width and active parameter count to an epoch record (``kd_epoch_end``)."""
    state = active(run)
    if state is None:
        return
    record["assistant_width"] = float(state.assistant.width)
    record["assistant_parameters"] = state.assistant.active_parameters()


def finish(run: Any, summary: dict[str, Any]) -> None:
    """Save the assistant and report its final size in the stage summary (``kd_fit_end``)."""
    state = active(run)
    if state is None:
        return
    path = run.run_dir / "checkpoints" / "gtan_assistant.pt"
    save_checkpoint(
        path,
        {
            "stage": "gtan_assistant",
            "arch": GTAN_ARCH,
            "width": float(state.assistant.width),
            "model": state.assistant.state_dict(),
            "data_info": dict(run.data.info),
        },
    )
    summary["assistant_width"] = float(state.assistant.width)
    summary["assistant_parameters"] = state.assistant.active_parameters()
    summary["assistant_checkpoint"] = str(path.relative_to(run.run_dir))
