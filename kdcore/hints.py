"""Feature-level distillation terms configured in ``distill.hints``.

Each entry pairs a student module with a teacher module by their dotted names and says how to compare
their outputs::

    [[distill.hints]]
    student = "features.3"
    teacher = "features.6"
    loss = "hint"          # hint (FitNets, with an automatic adapter), attention, similarity, rkd_distance
    weight = 1.0

The term is logged as ``"<loss>:<student module>"`` and weighted by ``weight`` (its ``distill.weights``
schedule, when one is given, multiplies on top).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdcore.features import FeatureCapture
from kdcore.losses import FEATURE_LOSSES, FeatureHint

HINT_LOSSES = ("hint", *FEATURE_LOSSES)
_HINT_KEYS = {"student", "teacher", "loss", "weight"}


@dataclass(frozen=True)
class HintSpec:
    """One validated ``distill.hints`` entry."""

    student: str
    teacher: str
    loss: str = "hint"
    weight: float = 1.0

    @property
    def term(self) -> str:
        return f"{self.loss}:{self.student}"


def parse_hints(entries: Sequence[Mapping[str, Any]]) -> list[HintSpec]:
    """Validate ``distill.hints`` entries, with errors that name the entry and key."""
    specs = []
    for i, entry in enumerate(entries):
        where = f"distill.hints[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a table like {{student = 'layer2', teacher = 'layer3'}}")
        unknown = set(entry) - _HINT_KEYS
        if unknown:
            raise ValueError(
                f"{where} has unknown key(s) {sorted(unknown)}; valid keys: {sorted(_HINT_KEYS)}"
            )
        for key in ("student", "teacher"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ValueError(f"{where}.{key} must name a module (a dotted path such as 'layer2.1')")
        loss = entry.get("loss", "hint")
        if loss not in HINT_LOSSES:
            raise ValueError(f"{where}.loss {loss!r} is not one of {', '.join(HINT_LOSSES)}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ValueError(f"{where}.weight must be a non-negative number, got {weight!r}")
        specs.append(HintSpec(entry["student"], entry["teacher"], loss, float(weight)))
    return specs


class HintTerms(nn.Module):
    """The feature captures and comparison modules of a distilled stage; adapters are trainable.

    Build it with :meth:`build` (one probe forward pass fixes the adapter shapes), call
    :meth:`compute` after the student and teacher forwards of each step, and :meth:`close` at the end.
    """

    def __init__(self, specs: Sequence[HintSpec], student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.specs = list(specs)
        self.student_capture = FeatureCapture(student, [s.student for s in self.specs])
        self.teacher_capture = FeatureCapture(teacher, [s.teacher for s in self.specs], detach=True)
        self.comparers = nn.ModuleDict()
        self._functions: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}

    @classmethod
    def build(
        cls, specs: Sequence[HintSpec], student: nn.Module, teacher: nn.Module, probe_inputs: Any
    ) -> HintTerms:
        terms = cls(specs, student, teacher)
        try:
            with torch.no_grad():
                was_training = student.training
                student.eval()
                student(probe_inputs)
                teacher(probe_inputs)
                student.train(was_training)
            for i, spec in enumerate(terms.specs):
                s_feat = terms.student_capture.features[spec.student]
                t_feat = terms.teacher_capture.features[spec.teacher]
                if spec.loss == "hint":
                    terms.comparers[str(i)] = FeatureHint(s_feat.shape, t_feat.shape).to(s_feat.device)
                else:
                    terms._functions[str(i)] = FEATURE_LOSSES[spec.loss]
        except Exception:
            terms.close()
            raise
        terms.student_capture.clear()
        terms.teacher_capture.clear()
        return terms

    def compute(self) -> dict[str, torch.Tensor]:
        """The weighted feature terms of the last forward passes, ``{term: scalar tensor}``."""
        out = {}
        for i, spec in enumerate(self.specs):
            s_feat = self.student_capture.features[spec.student]
            t_feat = self.teacher_capture.features[spec.teacher]
            key = str(i)
            compare = self.comparers[key] if key in self.comparers else self._functions[key]
            out[spec.term] = spec.weight * compare(s_feat, t_feat)
        return out

    def close(self) -> None:
        self.student_capture.close()
        self.teacher_capture.close()
