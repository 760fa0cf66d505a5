"""``dice_kl``: voxel-wise soft-target KD balanced across classes, for segmentation with tiny structures.

kdcore's ``dense_kl`` averages the KL divergence over every voxel. In an abdominal CT most voxels are
background the student already gets right, so a tumour (often well under 1 % of a patch) adds almost
nothing to that mean: the teacher's knowledge about the rare classes, the very thing a small student
lacks, is drowned out. The supervised side solves the same imbalance with a Dice term (Dice + CE); this
loss does the same on the distillation side:

    dice_kl(s, t, T) = dense_kl(s, t, T) + SoftDice(softmax(s / T), softmax(t / T))

``dense_kl`` is kdcore's (KL averaged over voxels, times ``T**2``). The soft Dice is MONAI's ``DiceLoss``
with the teacher's tempered probabilities as a soft target, computed over the whole batch for each
foreground class and averaged over those classes, so the liver and a small tumour weigh the same. It
is registered with kdcore under ``distill.loss = "dice_kl"`` and is the liver task's default.

The Dice term is the plain (not squared) soft Dice, ``1 - 2 sum(q p) / (sum(q) + sum(p))``: it is not zero
when the student copies the teacher's soft probabilities ``p``; it is lowest when the student puts each
class where the teacher gives it most probability, like a Dice against the teacher's mask with soft
edges. The KL term is what matches the distributions themselves. (This is the variant measured in
BENCHMARKS.md.)
"""

from __future__ import annotations

import functools

import torch

from kdcore.losses import dense_kl


def dice_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Dense KL (``T**2``-scaled) plus soft Dice between tempered student and teacher probabilities.

    Args:
        student_logits: ``(N, C, *spatial)`` student logits.
        teacher_logits: teacher logits of the same shape (detached here).
        temperature: softening temperature (a float or a one-element tensor).

    Returns:
        A 0-dim tensor.
    """
    teacher_logits = teacher_logits.detach()
    kl = dense_kl(student_logits, teacher_logits, temperature)
    soft_target = torch.softmax(teacher_logits.float() / temperature, dim=1)
    return kl + _soft_dice()(student_logits.float() / temperature, soft_target)


@functools.cache
def _soft_dice() -> torch.nn.Module:
    from monai.losses import DiceLoss  # MONAI is imported on first use: `kd --help` stays fast

    return DiceLoss(include_background=False, softmax=True, batch=True)
