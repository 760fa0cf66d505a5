"""The teacher's soft targets on the target's training pairs, mended by transitivity.

Identity is transitive: when the teacher matches record a with b and b with c, a and c are one entity
too, however unlike a and c look. In a deduplicated table these are pairs of two duplicates of one
original that each carry their own errors, the pairs a matcher trained on cleaner data scores low
(BENCHMARKS.md, dedup). With ``options.transitive_targets`` (the default) each distilled stage learns
such a pair, one the teacher calls a non-match but whose records a chain of its matches joins, as a
match as strong as the chain's weakest link (the strongest chain's; the max-min closure of
:func:`kd_dedup.clustering.transitive_scores`). Every other pair keeps the teacher's logits as they are:
raising the margins of pairs the teacher already matches made the student match more of ``kd dedup
apply``'s neighbour proposals wrongly (BENCHMARKS.md, dedup), and logit losses (``distill.loss =
"mse"``) see the teacher's own logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kd_dedup.clustering import transitive_scores
from kd_dedup.data import PairSet


def threshold_margin(threshold: float) -> float:
    """The logit margin (match minus non-match) at which the match probability is ``threshold``.

    Raises:
        ValueError: naming ``options.threshold`` unless ``0 < threshold < 1``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"options.threshold must be a match probability strictly between 0 and 1, got {threshold}"
        )
    return math.log(threshold) - math.log1p(-threshold)


@torch.no_grad()
def teacher_logits(
    teacher: nn.Module, pairs: PairSet, device: torch.device, batch: int = 1024
) -> torch.Tensor:
    """The teacher's logits ``(m, 2)`` (CPU float32) on every pair of ``pairs``, through its forward (any
    teacher the engine hands a stage: one matcher or an ensemble of them)."""
    out = [
        teacher(pairs.codes[pairs.pairs[i : i + batch]].to(device)).float().cpu()
        for i in range(0, len(pairs), batch)
    ]
    return torch.cat(out) if out else torch.zeros(0, 2)


def transitive_targets(logits: torch.Tensor, pairs: PairSet, threshold: float) -> torch.Tensor:
    """The teacher's ``logits`` ``(m, 2)``, where a pair it scores under ``threshold`` has its records
    joined by a chain of its matches, with the match logit raised until the margin is that of the
    chain's weakest link; see the module docstring. ``logits`` is not modified."""
    margins = (logits[:, 1] - logits[:, 0]).double()
    cut = threshold_margin(threshold)
    closed = torch.from_numpy(transitive_scores(len(pairs.table), pairs.pairs.numpy(), margins.numpy(), cut))
    mended = torch.where(margins < cut, closed, margins)
    raised = logits.clone()
    raised[:, 1] += (mended - margins).to(logits.dtype)
    return raised
