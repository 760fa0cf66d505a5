"""From scored pairs to entities, and how good the pairs and entities are against the ground truth.

:func:`cluster_records` keeps the pairs scored at or above a threshold and labels records by connected
components (transitive closure). :func:`pair_metrics` compares two pair arrays; :func:`cluster_metrics`
compares a clustering with the true entities through cluster x entity contingency counts, so a cluster
of 100 000 records costs a few counters rather than five billion pairs.

Conventions: precision = tp / (tp + fp) and is 0.0 when nothing is predicted; recall = tp / (tp + fn)
and is 0.0 when there is nothing to find; f1 is their harmonic mean and 0.0 when both are 0. Pairs are
unordered: ``(i, j)`` and ``(j, i)`` are the same pair. For linkage (``side`` given) only pairs joining
table A and table B count, in clusters and entities alike.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score

from kd_dedup.blocking import isin_sorted, unique_codes
from kd_dedup.tables import connected_entities, first_appearance

__all__ = ["cluster_metrics", "cluster_records", "pair_metrics", "transitive_scores"]


def _pairs(pairs: np.ndarray, what: str, n: int | None = None) -> np.ndarray:
    array = np.asarray(pairs)
    if array.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if array.ndim != 2 or array.shape[1] != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{what} must be an (m, 2) integer array of record positions, got shape {array.shape}"
        )
    if array.min() < 0 or (n is not None and array.max() >= n):
        bad = array.min() if array.min() < 0 else array.max()
        limit = f"0..{n - 1}" if n is not None else ">= 0"
        raise ValueError(f"{what} hold record position {bad}; positions must be in {limit}")
    selfish = np.flatnonzero(array[:, 0] == array[:, 1])
    if selfish.size:
        raise ValueError(f"{what}: row {selfish[0]} pairs record {array[selfish[0], 0]} with itself")
    return array.astype(np.int64, copy=False)


def cluster_records(n: int, pairs: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Entity label (int64) per record: connected components of the pairs scored ``>= threshold``.

    ``pairs`` is ``(m, 2)`` record positions below ``n`` and ``scores`` holds one score per pair (a NaN
    score never links). Labels run ``0..k-1`` in order of each cluster's first record.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a number of records >= 0, got {n!r}")
    pairs = _pairs(pairs, "pairs", int(n))
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(pairs):
        raise ValueError(f"scores must hold one score per pair: {len(scores)} scores for {len(pairs)} pairs")
    return connected_entities(int(n), pairs[scores >= threshold])


def transitive_scores(n: int, pairs: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Each pair's score raised to the strongest chain of matches that joins its two records.

    A chain is a path of pairs scored ``>= threshold`` (the matches :func:`cluster_records` links); its
    strength is its weakest pair's score. A pair whose records the matches join gets the strongest such
    strength when that is above its own score (the max-min transitive closure, single linkage's merge
    height); every other pair keeps its score. So two records the matches put in one entity score at
    least ``threshold``, and as much as the weakest link joining them. Any monotone score works (match
    probabilities, logit margins). Union-find over the matches from the strongest down, merging the
    smaller component's pending pairs into the larger's: ``O(m log m)``.
    """
    pairs = _pairs(pairs, "pairs", int(n))
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(pairs):
        raise ValueError(f"scores must hold one score per pair: {len(scores)} scores for {len(pairs)} pairs")
    closed = scores.copy()
    parent = np.arange(n)
    members: dict[int, list[int]] = {}  # root -> its records (for components of 2 or more)
    pending: dict[int, list[int]] = {}  # record -> the pairs it is part of
    for index, (a, b) in enumerate(pairs.tolist()):
        pending.setdefault(a, []).append(index)
        pending.setdefault(b, []).append(index)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    linking = np.flatnonzero(scores >= threshold)
    for edge in linking[np.argsort(-scores[linking], kind="stable")].tolist():
        big, small = root(int(pairs[edge, 0])), root(int(pairs[edge, 1]))
        if big == small:
            continue
        if len(members.get(big, [big])) < len(members.get(small, [small])):
            big, small = small, big
        for record in members.get(small, [small]):
            for index in pending.get(record, ()):
                other = pairs[index, 1] if pairs[index, 0] == record else pairs[index, 0]
                joined = root(int(other)) == big  # now, by this chain's weakest link so far
                if joined and not closed[index] >= scores[edge]:
                    closed[index] = scores[edge]
        parent[small] = big
        members[big] = members.pop(big, [big]) + members.pop(small, [small])
    return closed


def _ratios(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def pair_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Precision, recall, f1, tp, fp and fn of ``predicted`` pairs against ``truth`` pairs.

    Both are ``(m, 2)`` record positions; pairs are unordered and duplicates count once. Precision is 0.0
    when nothing is predicted, recall 0.0 when ``truth`` is empty (see the module docstring).
    """
    predicted, truth = _pairs(predicted, "predicted pairs"), _pairs(truth, "true pairs")
    n = int(max(predicted.max(initial=-1), truth.max(initial=-1))) + 1

    def codes(pairs: np.ndarray) -> np.ndarray:
        return unique_codes(pairs.min(axis=1) * n + pairs.max(axis=1))

    predicted_codes, true_codes = codes(predicted), codes(truth)
    tp = int(isin_sorted(true_codes, predicted_codes).sum())
    return _ratios(tp, len(predicted_codes) - tp, len(true_codes) - tp)


def ceiling_f1(completeness: float) -> float:
    """The pairwise F1 of a perfect scorer on candidate pairs holding ``completeness`` of the true pairs
    (precision 1, recall ``completeness``): the most any matcher reaches on those candidates."""
    return 2 * completeness / (1 + completeness)


def _linked_pairs(groups: np.ndarray, side: np.ndarray | None) -> int:
    """Pairs inside the groups ``0..k-1``: sum of C(size, 2), or of |A| * |B| for linkage."""
    if side is None:
        size = np.bincount(groups).astype(np.int64)
        return int((size * (size - 1) // 2).sum())
    in_b = np.bincount(groups, weights=side).astype(np.int64)
    in_a = np.bincount(groups).astype(np.int64) - in_b
    return int((in_a * in_b).sum())


def cluster_metrics(
    labels: np.ndarray, entity: np.ndarray, side: np.ndarray | None = None
) -> dict[str, float | int]:
    """Quality of a clustering ``labels`` against the true ``entity`` per record, without listing pairs.

    Returns pairwise ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn`` over the pairs the clusters
    imply (all pairs inside a cluster; for linkage, with ``side``, only pairs across A and B), ``ari``
    (adjusted Rand index over all records) and ``exact_entities`` (share of true entities whose records
    are exactly one predicted cluster, nothing missing and nothing extra).
    """
    labels, entity = np.asarray(labels).reshape(-1), np.asarray(entity).reshape(-1)
    if len(labels) != len(entity):
        raise ValueError(f"labels and entity must have one value per record: {len(labels)} vs {len(entity)}")
    if side is not None:
        side = np.asarray(side).reshape(-1)
        if len(side) != len(labels):
            raise ValueError(f"side must have one value per record: {len(side)} for {len(labels)} records")
        if not np.isin(side, (0, 1)).all():
            raise ValueError("side must hold only 0 (table A) and 1 (table B)")
        side = side.astype(np.float64)
    if len(labels) == 0:
        return {**_ratios(0, 0, 0), "ari": 1.0, "exact_entities": 1.0}
    cluster = first_appearance(labels)
    truth = first_appearance(entity)
    # A cell of the contingency table: one (cluster, entity) combination.
    cell = first_appearance(cluster * (int(truth.max()) + 1) + truth)
    predicted = _linked_pairs(cluster, side)
    actual = _linked_pairs(truth, side)
    tp = _linked_pairs(cell, side)
    # Exact entities: a cell that holds the whole entity and the whole cluster.
    cell_size = np.bincount(cell)
    # Cells are numbered in order of first appearance: a record opens a cell when its number exceeds
    # every number before it.
    opens = np.ones(len(cell), dtype=bool)
    opens[1:] = cell[1:] > np.maximum.accumulate(cell)[:-1]
    first_of_cell = np.flatnonzero(opens)
    exact = (cell_size == np.bincount(truth)[truth[first_of_cell]]) & (
        cell_size == np.bincount(cluster)[cluster[first_of_cell]]
    )
    return {
        **_ratios(tp, predicted - tp, actual - tp),
        "ari": float(adjusted_rand_score(truth, cluster)),
        "exact_entities": float(exact.sum()) / (int(truth.max()) + 1),
    }
