"""``dice_kl``: dense KL plus a soft Dice on the teacher's probabilities, registered with kdcore."""

from __future__ import annotations

import pytest
import torch

from kd_liverct.losses import dice_kl
from kdcore.losses import dense_kl
from kdcore.plugins import get_registry

T = 2.0


def logits_with_a_small_tumour(tumour_logit: float) -> torch.Tensor:
    """Confident logits [1, 3, 16, 16, 8]: background, a liver block, a 2x2x2 tumour inside it."""
    logits = torch.zeros(1, 3, 16, 16, 8)
    logits[:, 0] = 20.0
    logits[:, 1, 4:12, 4:12, 2:6] = 40.0
    logits[:, 2, 7:9, 7:9, 3:5] = tumour_logit
    return logits


def dice_term(student: torch.Tensor, teacher: torch.Tensor) -> float:
    return float(dice_kl(student, teacher, T)) - float(dense_kl(student, teacher, T))


def test_a_student_that_copies_a_confident_teacher_costs_almost_nothing():
    teacher = logits_with_a_small_tumour(60.0)
    assert float(dice_kl(teacher, teacher, T)) == pytest.approx(0.0, abs=0.01)
    assert get_registry().losses["dice_kl"] is dice_kl


def test_a_missed_tumour_costs_the_dice_term_more_than_the_voxel_mean_kl():
    teacher = logits_with_a_small_tumour(60.0)  # sees the tumour
    student = logits_with_a_small_tumour(0.0)  # calls it liver
    # 8 of 2,048 voxels disagree: the voxel mean moves a little, the per-class Dice loses half a class.
    assert dice_term(student, teacher) - dice_term(teacher, teacher) > 0.45
    assert dice_term(student, teacher) > 1.5 * float(dense_kl(student, teacher, T))


def test_gradients_reach_the_student_only():
    teacher = logits_with_a_small_tumour(60.0).requires_grad_()
    student = logits_with_a_small_tumour(0.0).requires_grad_()
    dice_kl(student, teacher, torch.tensor(3.0)).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None
