"""Who teaches whom: the stages of a run for each distillation strategy.

- ``offline``: train (or load) the teacher, then distil it into the student.
- ``assistant_chain``: teacher → assistant 1 → … → student (Mirzadeh et al., 2020): each assistant is
  distilled from the model before it and then teaches the next, bridging a large capacity gap.
- ``ensemble``: several teachers (``teacher.arch`` plus ``distill.extra_teachers``) whose logits are
  averaged with ``distill.teacher_weights`` teach the student.

With ``distill.baseline = true`` a final stage trains the student architecture from the same
initialisation on the same data order with no teacher, so the report can show what distillation bought.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from kdcore.config import variant_configs

STRATEGIES = ("offline", "assistant_chain", "ensemble")


@dataclass(frozen=True)
class Stage:
    """One model to train in a run.

    Args:
        name: "teacher", "teacher2", "assistant1", "student", "baseline"; names checkpoint files.
        arch: the architecture name handed to the task's ``build_model``.
        section: the config section holding the stage's optimiser settings ("teacher" or "student").
        distilled: True when the stage learns from a teacher, False for supervised-only training.
        variant: the ``variants`` entry the stage belongs to ("" for shared stages and runs without).
        primary: True for the run's main student, whose checkpoints are ``best.pt`` and ``last.pt``.
    """

    name: str
    arch: str
    section: str
    distilled: bool
    variant: str = ""
    primary: bool = False

    @property
    def label(self) -> str:
        """The stage's name in metrics, summaries and reports: ``"kd/student"`` inside a variant."""
        return f"{self.variant}/{self.name}" if self.variant else self.name

    @property
    def checkpoint_prefix(self) -> str:
        """``""`` for the primary student, else ``"<variant>.<name>_"`` or ``"<name>_"``."""
        return "" if self.primary else self.label.replace("/", ".") + "_"

    @property
    def is_teacher(self) -> bool:
        return self.section == "teacher"


def plan_stages(config: Mapping[str, Any]) -> list[Stage]:
    """The ordered stages of a run, from the resolved configuration.

    Raises:
        ValueError: naming the key when the strategy is unknown or its settings do not fit it.
    """
    distill = config["distill"]
    strategy = distill["strategy"]
    if strategy not in STRATEGIES:
        raise ValueError(f"distill.strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    extra, assistants = list(distill["extra_teachers"]), list(distill["assistants"])
    if strategy == "ensemble" and not extra:
        raise ValueError("distill.strategy = 'ensemble' needs at least one distill.extra_teachers entry")
    if strategy != "ensemble" and extra:
        raise ValueError(
            f"distill.extra_teachers is set but distill.strategy is {strategy!r}, not 'ensemble'"
        )
    if strategy == "assistant_chain" and not assistants:
        raise ValueError("distill.strategy = 'assistant_chain' needs at least one distill.assistants entry")
    if strategy != "assistant_chain" and assistants:
        raise ValueError(f"distill.assistants is set but distill.strategy is {strategy!r}")
    weights = distill["teacher_weights"]
    if weights and len(weights) != 1 + len(extra):
        raise ValueError(
            f"distill.teacher_weights has {len(weights)} entries for {1 + len(extra)} teachers "
            "(teacher.arch plus distill.extra_teachers)"
        )

    stages = [Stage("teacher", config["teacher"]["arch"], "teacher", distilled=False)]
    stages += [Stage(f"teacher{i + 2}", arch, "teacher", distilled=False) for i, arch in enumerate(extra)]
    stages += [
        Stage(f"assistant{i + 1}", arch, "student", distilled=True) for i, arch in enumerate(assistants)
    ]
    stages.append(Stage("student", config["student"]["arch"], "student", distilled=True, primary=True))
    if distill["baseline"]:
        stages.append(Stage("baseline", config["student"]["arch"], "student", distilled=False))
    return stages


def plan_run(config: Mapping[str, Any]) -> list[tuple[Stage, dict[str, Any]]]:
    """Every stage of a run with the configuration it trains under, in order.

    Without ``variants`` these are :func:`plan_stages`. With them, the teachers are trained once, then each
    variant's assistants and student train under the run's config with the variant merged in, and the
    no-KD baseline trains last. The student of ``primary_variant`` (when it is among the variants
    trained; else the first variant's) is the run's primary student, whatever its place in the order: a
    variant that only prepares others (an architecture search) can run first.
    """
    base = {**config, "variants": {}}
    shared = plan_stages(base)
    if not config.get("variants"):
        return [(stage, base) for stage in shared]
    plan = [(stage, base) for stage in shared if stage.is_teacher]
    named = variant_configs(config)
    primary_name = config.get("primary_variant") or ""
    if primary_name not in config["variants"]:
        primary_name = named[0][0]
    for name, variant_config in named:
        for stage in plan_stages(variant_config):
            if not stage.is_teacher and stage.name != "baseline":
                primary = name == primary_name and stage.name == "student"
                plan.append((replace(stage, variant=name, primary=primary), variant_config))
    plan += [(stage, base) for stage in shared if stage.name == "baseline"]
    return plan


class EnsembleTeacher(nn.Module):
    """Several teachers as one: the weighted mean of their logits.

    Averaging logits (rather than probabilities) keeps the output a logit tensor that any logit-level
    loss accepts; with a temperature the softened distributions are those of the averaged logits.

    Args:
        teachers: the teacher models; all must produce outputs of the same shape.
        weights: one non-negative weight per teacher (normalised to sum to 1); default equal.
    """

    def __init__(self, teachers: Sequence[nn.Module], weights: Sequence[float] = ()) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("EnsembleTeacher needs at least one teacher")
        weights = list(weights) or [1.0] * len(teachers)
        if len(weights) != len(teachers) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"teacher weights {weights} must be {len(teachers)} non-negative numbers, not all 0"
            )
        self.teachers = nn.ModuleList(teachers)
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights]))

    def forward(self, inputs: Any) -> torch.Tensor:
        outputs = [teacher(inputs) for teacher in self.teachers]
        return sum(w * out for w, out in zip(self.weights, outputs, strict=True))
