"""Scoring a matcher on labelled candidate pairs: pairwise precision/recall/F1, average precision, and the
quality of the entities that clustering the matches gives.

A pair is a match when its match probability is at least ``options.threshold`` (default 0.5). Recall
counts the true pairs that blocking never proposed as misses (``PairSet.missed_true_pairs``): it is the
recall of the whole pipeline, blocking included. Average precision (scikit-learn) ranks the candidate
pairs by score. The matched pairs are then clustered into entities (connected components,
:mod:`kd_dedup.clustering`) and the clusters scored against the true entities: pairwise ``cluster_f1``
(all pairs inside a cluster; transitivity can add or repair pairs), the adjusted Rand index and the
share of entities recovered exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch.utils.data import DataLoader

from kd_dedup.clustering import cluster_metrics, cluster_records
from kd_dedup.data import PairSet, pair_truth
from kd_dedup.model import encode_table, score_pairs


def pair_scores(model: torch.nn.Module, pairs: PairSet, device: torch.device) -> np.ndarray:
    """Match probability of every pair of ``pairs``: each record encoded once, then the head per pair."""
    encoded = encode_table(model, pairs.codes, device)
    return score_pairs(model, encoded, pairs.pairs).numpy()


def match_metrics(pairs: PairSet, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Metrics of ``scores`` on the fully labelled ``pairs`` (see the module docstring)."""
    truth = pairs.labels.numpy()
    if (truth < 0).any():
        raise ValueError("match_metrics needs every pair labelled")
    predicted = scores >= threshold
    tp = int((predicted & (truth == 1)).sum())
    fp = int((predicted & (truth == 0)).sum())
    fn = int(((~predicted) & (truth == 1)).sum()) + pairs.missed_true_pairs
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    completeness = truth.sum() / max(1, truth.sum() + pairs.missed_true_pairs)
    has_both = 0 < truth.sum() < len(truth)
    metrics = {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        # AP over the candidates, scaled by the share of true pairs blocking kept (lost ones are never found).
        "average_precision": float(average_precision_score(truth, scores) * completeness)
        if has_both
        else 0.0,
    }
    table = pairs.table
    if table.entity is not None:
        clusters = cluster_records(len(table), pairs.pairs.numpy(), scores, threshold)
        clustered = cluster_metrics(clusters, table.entity, table.side)
        metrics.update(
            cluster_f1=float(clustered["f1"]),
            ari=float(clustered["ari"]),
            exact_entities=float(clustered["exact_entities"]),
        )
    return metrics


def blocking_summary(pairs: PairSet) -> dict[str, float | int]:
    """How blocking did on a pair set: candidate pairs, pairs completeness (share of the table's true
    pairs proposed) and reduction ratio (share of all record pairs skipped). Completeness comes from the
    table's ground truth, not from the pair labels: a student's training pool labels only a few pairs."""
    found = int(pair_truth(pairs.table, pairs.pairs.numpy()).sum())
    true_pairs = len(pairs.table.true_pairs())
    return {
        "records": len(pairs.table),
        "candidate_pairs": len(pairs),
        "pairs_completeness": found / true_pairs if true_pairs else 1.0,
        "reduction_ratio": 1.0 - len(pairs) / max(1, pairs.table.possible_pairs()),
    }


def evaluate_matcher(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, config: Mapping[str, Any]
) -> dict[str, float]:
    """The task's ``evaluate``: :func:`match_metrics` of the model on the loader's :class:`PairSet`."""
    pairs = loader.dataset
    if not isinstance(pairs, PairSet):
        raise TypeError(f"the dedup task evaluates PairSet data, not {type(pairs).__name__}")
    return match_metrics(pairs, pair_scores(model, pairs, device), float(config["options"]["threshold"]))
