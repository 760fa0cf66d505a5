"""Re-ID losses: identity cross-entropy with label smoothing, batch-hard triplet, KD on identity logits.

The supervised loss is the sum of the two terms of the strong re-ID baseline (Luo et al. 2019):
cross-entropy on the identity logits with label smoothing 0.1 (Szegedy et al. 2016), and the batch-hard
triplet loss with margin 0.3 (Hermans, Beyer and Leibe, 2017) on the features before the BNNeck. The
distillation term (``distill.loss = "reid_kl"``) is kdcore's soft-target KL on the identity logits, at
the run's temperature: teacher and student share the training identities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_reid.heads import ReIDOutput
from kdcore.losses import soft_target_kl

LABEL_SMOOTHING = 0.1
TRIPLET_MARGIN = 0.3


def batch_hard_triplet(
    features: torch.Tensor, labels: torch.Tensor, margin: float = TRIPLET_MARGIN
) -> torch.Tensor:
    """Mean over anchors of ``relu(hardest positive distance - hardest negative distance + margin)``.

    Euclidean distances between the features of the batch; an anchor without a positive or a negative
    in the batch is left out (a P x K batch with K >= 2 has both for every anchor). Zero when no anchor
    qualifies.
    """
    features = features.float()
    distances = torch.cdist(features, features).clamp_min(1e-12)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives, negatives = same & ~eye, ~same
    valid = positives.any(dim=1) & negatives.any(dim=1)
    if not valid.any():
        return features.sum() * 0.0
    hardest_positive = distances.masked_fill(~positives, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(~negatives, float("inf")).amin(dim=1)
    return F.relu(hardest_positive - hardest_negative + margin)[valid].mean()


def reid_loss(outputs: ReIDOutput, labels: torch.Tensor) -> torch.Tensor:
    """The supervised loss: label-smoothed identity cross-entropy plus batch-hard triplet."""
    ce = F.cross_entropy(outputs.logits.float(), labels, label_smoothing=LABEL_SMOOTHING)
    return ce + batch_hard_triplet(outputs.features, labels)


def reid_kl(student: ReIDOutput, teacher: ReIDOutput, temperature) -> torch.Tensor:
    """Soft-target KL between the student's and the teacher's identity logits (kdcore's, with T^2)."""
    return soft_target_kl(student.logits, teacher.logits, temperature)
