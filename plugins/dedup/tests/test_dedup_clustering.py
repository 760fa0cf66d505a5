"""kd_dedup.clustering: clusters from scored pairs, pair and cluster metrics on cases known by hand."""

from __future__ import annotations

import time
from itertools import combinations

import numpy as np
import pytest

from kd_dedup.clustering import cluster_metrics, cluster_records, pair_metrics


def test_cluster_records_threshold_and_labels():
    pairs = np.array([[0, 1], [1, 2], [3, 4], [4, 5]])
    scores = np.array([0.9, 0.2, 0.8, 0.5])
    # Kept (>= 0.5): 0-1, 3-4, 4-5.
    assert cluster_records(6, pairs, scores, 0.5).tolist() == [0, 0, 1, 2, 2, 2]
    assert cluster_records(6, pairs, scores, 0.1).tolist() == [0, 0, 0, 1, 1, 1]
    assert cluster_records(6, pairs, scores, 0.95).tolist() == [0, 1, 2, 3, 4, 5]
    # Labels follow the first record of each cluster.
    assert cluster_records(5, np.array([[4, 0], [3, 2]]), np.array([1.0, 1.0]), 0.5).tolist() == [
        0,
        1,
        2,
        2,
        0,
    ]
    # A NaN score never links; no pairs at all: every record alone.
    assert cluster_records(3, np.array([[0, 1]]), np.array([np.nan]), 0.0).tolist() == [0, 1, 2]
    labels = cluster_records(3, np.zeros((0, 2), dtype=np.int64), np.zeros(0), 0.5)
    assert labels.tolist() == [0, 1, 2] and labels.dtype == np.int64


def test_cluster_records_errors():
    with pytest.raises(ValueError, match="scores must hold one score per pair: 1 scores for 2 pairs"):
        cluster_records(3, np.array([[0, 1], [1, 2]]), np.array([0.5]), 0.5)
    with pytest.raises(ValueError, match=r"pairs hold record position 3; positions must be in 0\.\.2"):
        cluster_records(3, np.array([[0, 3]]), np.array([0.5]), 0.5)
    with pytest.raises(ValueError, match="row 1 pairs record 2 with itself"):
        cluster_records(3, np.array([[0, 1], [2, 2]]), np.array([0.5, 0.5]), 0.5)
    with pytest.raises(ValueError, match="n must be a number of records"):
        cluster_records(-1, np.zeros((0, 2), dtype=np.int64), np.zeros(0), 0.5)


def test_pair_metrics_known_case():
    predicted = np.array([[0, 1], [2, 3], [1, 0]])  # (1, 0) is (0, 1) again
    truth = np.array([[0, 1], [0, 2], [1, 2]])
    metrics = pair_metrics(predicted, truth)
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (1, 1, 2)
    assert metrics["precision"] == 0.5
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(0.4)


def test_pair_metrics_empty_sides():
    truth = np.array([[0, 1], [2, 3]])
    nothing = np.zeros((0, 2), dtype=np.int64)
    assert pair_metrics(nothing, truth) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "tp": 0,
        "fp": 0,
        "fn": 2,
    }
    assert pair_metrics(truth, nothing) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "tp": 0,
        "fp": 2,
        "fn": 0,
    }
    perfect = pair_metrics(truth[:, ::-1], truth)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)


def test_cluster_metrics_known_case():
    labels = np.array([0, 0, 0, 1, 1, 2])
    entity = np.array([5, 5, 7, 7, 7, 9])
    metrics = cluster_metrics(labels, entity)
    # Predicted pairs: 3 + 1; true pairs: 1 + 3; shared: (0,1) and (3,4).
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (2, 2, 2)
    assert (metrics["precision"], metrics["recall"], metrics["f1"]) == (0.5, 0.5, 0.5)
    # ARI = (2 - 4*4/15) / (4 - 4*4/15) = 7/22.
    assert metrics["ari"] == pytest.approx(7 / 22)
    # Only entity 9 (record 5, alone in cluster 2) is exactly one cluster.
    assert metrics["exact_entities"] == pytest.approx(1 / 3)


def test_cluster_metrics_perfect_and_label_names_do_not_matter():
    entity = np.array([3, 3, 8, 1, 8, 8])
    metrics = cluster_metrics(np.array([40, 40, -2, 7, -2, -2]), entity)
    assert metrics == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "tp": 4,
        "fp": 0,
        "fn": 0,
        "ari": 1.0,
        "exact_entities": 1.0,
    }


def test_cluster_metrics_linkage_counts_only_cross_pairs():
    side = np.array([0, 1, 1, 1])
    entity = np.zeros(4, dtype=np.int64)  # true cross pairs: (0,1) (0,2) (0,3)
    metrics = cluster_metrics(np.array([0, 0, 0, 1]), entity, side)
    # Cluster 0 holds A {0} and B {1, 2}: 2 cross pairs, both true; (1,2) inside B is not counted.
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (2, 0, 1)
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx(2 / 3)
    # Same-table clusters imply no linkage pair at all.
    same_table = cluster_metrics(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))
    assert (same_table["tp"], same_table["fp"], same_table["fn"]) == (0, 0, 0)
    assert same_table["precision"] == 0.0 and same_table["recall"] == 0.0
    with pytest.raises(ValueError, match="side must hold only 0"):
        cluster_metrics(np.zeros(2), np.zeros(2), np.array([0, 2]))
    with pytest.raises(ValueError, match="one value per record: 3 vs 2"):
        cluster_metrics(np.zeros(3), np.zeros(2))


@pytest.mark.parametrize("linkage", [False, True])
def test_cluster_metrics_agree_with_enumerated_pairs(linkage):
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(2, 25))
        labels, entity = rng.integers(0, 5, n), rng.integers(0, 5, n)
        side = rng.integers(0, 2, n) if linkage else None
        kept = [(i, j) for i, j in combinations(range(n), 2) if side is None or side[i] != side[j]]
        predicted = np.array([p for p in kept if labels[p[0]] == labels[p[1]]], dtype=np.int64).reshape(-1, 2)
        truth = np.array([p for p in kept if entity[p[0]] == entity[p[1]]], dtype=np.int64).reshape(-1, 2)
        from_pairs = pair_metrics(predicted, truth)
        from_counts = cluster_metrics(labels, entity, side)
        for key in ("tp", "fp", "fn", "precision", "recall", "f1"):
            assert from_counts[key] == pytest.approx(from_pairs[key]), key


def test_giant_cluster_counts_without_listing_pairs():
    n = 200_000
    entity = np.arange(n) // 2  # 100 000 true pairs
    start = time.perf_counter()
    metrics = cluster_metrics(np.zeros(n, dtype=np.int64), entity)
    linked = cluster_metrics(np.zeros(n, dtype=np.int64), entity, np.arange(n) % 2)
    elapsed = time.perf_counter() - start
    assert elapsed < 5, f"two giant-cluster metrics took {elapsed:.1f} s"
    all_pairs = n * (n - 1) // 2
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (100_000, all_pairs - 100_000, 0)
    assert metrics["precision"] == pytest.approx(100_000 / all_pairs)
    assert metrics["recall"] == 1.0 and metrics["exact_entities"] == 0.0
    assert metrics["ari"] == pytest.approx(0.0, abs=1e-6)
    # Linkage: 100 000 A x 100 000 B cross pairs in the one cluster.
    assert (linked["tp"], linked["fp"], linked["fn"]) == (100_000, 100_000**2 - 100_000, 0)
