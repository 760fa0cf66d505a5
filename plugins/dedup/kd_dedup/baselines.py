"""Classic entity-matching baselines from the ``recordlinkage`` package.

The Siamese student of this plugin is compared against two textbook record-linkage classifiers, both
run on the same hand-crafted comparison vectors (one string similarity per attribute column):

* :func:`logistic_regression_baseline`: a supervised logistic regression trained on a (typically tiny)
  set of labelled candidate pairs;
* :func:`ecm_baseline`: the unsupervised Fellegi-Sunter model fitted by expectation-conditional
  maximisation (ECM) on the unlabelled pairs to classify.

:func:`comparison_features` builds the comparison vectors with :class:`recordlinkage.Compare` and
:func:`classic_baselines` chains everything for one train / eval split.

Conventions shared by every function here:

* ``records`` is one :class:`pandas.DataFrame` of string attributes whose rows are addressed by position
  (``0 .. n-1``); for a linkage problem the two tables are stacked in it. Missing values are ``""`` (NaN
  and ``None`` are treated the same way).
* ``pairs`` is an ``(m, 2)`` integer array of positional record pairs ``(a, b)``, e.g. the candidate pairs
  of a blocking step.
* Probabilities are match probabilities in ``[0, 1]``, one per pair, in the order of the pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import recordlinkage

__all__ = [
    "DEFAULT_METHOD",
    "MISSING_SIMILARITY",
    "SIMILARITY_METHODS",
    "classic_baselines",
    "comparison_features",
    "ecm_baseline",
    "logistic_regression_baseline",
]

SIMILARITY_METHODS: tuple[str, ...] = (
    "exact",
    "jarowinkler",
    "levenshtein",
    "damerau_levenshtein",
    "qgram",
    "cosine",
)
"""Comparison methods accepted by :func:`comparison_features` (``recordlinkage`` names)."""

DEFAULT_METHOD = "jarowinkler"
"""The comparison used for every column that ``methods`` does not name."""

MISSING_SIMILARITY = 0.0
"""Similarity given to a pair when either value is missing (recordlinkage's ``missing_value``)."""


# ---------------------------------------------------------------------------------------------------------
# Comparison vectors
# ---------------------------------------------------------------------------------------------------------


def _check_pairs(pairs: np.ndarray, n_records: int) -> np.ndarray:
    """Validate positional record pairs and return them as an ``(m, 2)`` int64 array."""
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"pairs must have shape (m, 2), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"pairs must hold integer record positions, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_records):
        raise ValueError(
            f"pairs refer to record positions in [{arr.min()}, {arr.max()}], "
            f"but records only has positions 0..{n_records - 1}"
        )
    return arr


def _resolve_methods(columns: Sequence[str], methods: Mapping[str, str] | None) -> list[str]:
    """Return the comparison method of every column, validating ``methods``."""
    methods = dict(methods or {})
    unknown_columns = sorted(set(methods) - set(columns))
    if unknown_columns:
        raise ValueError(
            f"methods names columns that are not compared: {unknown_columns}; "
            f"compared columns: {list(columns)}"
        )
    resolved = []
    for column in columns:
        method = methods.get(column, DEFAULT_METHOD)
        if method not in SIMILARITY_METHODS:
            raise ValueError(
                f"unknown comparison method {method!r} for column {column!r}; "
                f"allowed methods: {', '.join(SIMILARITY_METHODS)}"
            )
        resolved.append(method)
    return resolved


def _missing_to_nan(uniques: np.ndarray) -> np.ndarray:
    """Map the distinct values of a column to str, with ``""``/NaN/None turned into NaN (missing)."""
    out = np.empty(len(uniques), dtype=object)
    for i, value in enumerate(uniques):
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            out[i] = np.nan
        else:
            text = value if isinstance(value, str) else str(value)
            out[i] = text if text else np.nan
    return out


def _column_similarity(values: pd.Series, pairs: np.ndarray, method: str) -> np.ndarray:
    """Similarity of one column for every pair, computed once per distinct (left, right) value pair.

    The column is factorised; each distinct pair of value codes is compared a single time by a
    :class:`recordlinkage.Compare` over the table of distinct values and the result is scattered back.
    Missing values stay in that table as NaN so that recordlinkage's ``missing_value`` applies to them.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    table_values = _missing_to_nan(np.asarray(uniques, dtype=object))
    n_unique = len(table_values)
    key = codes[pairs[:, 0]].astype(np.int64) * n_unique + codes[pairs[:, 1]]
    unique_keys, inverse = np.unique(key, return_inverse=True)
    left, right = unique_keys // n_unique, unique_keys % n_unique

    used = np.unique(np.concatenate([left, right]))
    if pd.isna(table_values[used]).all():
        # Nothing but missing values: recordlinkage's q-gram vectoriser fails on an empty vocabulary,
        # and every comparison is the missing value anyway.
        return np.full(len(pairs), MISSING_SIMILARITY, dtype=np.float32)

    table = pd.DataFrame({"value": table_values})
    compare = recordlinkage.Compare()
    if method == "exact":
        compare.exact("value", "value", missing_value=MISSING_SIMILARITY, label="sim")
    else:
        compare.string("value", "value", method=method, missing_value=MISSING_SIMILARITY, label="sim")
    sims = compare.compute(pd.MultiIndex.from_arrays([left, right]), table)["sim"].to_numpy(np.float64)
    sims = np.clip(np.nan_to_num(sims, nan=MISSING_SIMILARITY), 0.0, 1.0)
    return sims[inverse.reshape(-1)].astype(np.float32)


def comparison_features(
    records: pd.DataFrame,
    columns: Sequence[str],
    pairs: np.ndarray,
    methods: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Comparison vectors of record pairs: one similarity in ``[0, 1]`` per compared column.

    Args:
        records: the records, addressed by row position (the index itself is ignored); str columns,
            missing values ``""`` (NaN/None are treated as missing too, other values are cast to str).
        columns: the attribute columns to compare, in the order of the output features.
        pairs: ``(m, 2)`` integer array of positional record pairs ``(a, b)``.
        methods: optional per-column comparison, one of :data:`SIMILARITY_METHODS`: ``"exact"`` (1 if equal,
            else 0), ``"jarowinkler"``, ``"levenshtein"``, ``"damerau_levenshtein"`` (1 - edit distance /
            longer length), ``"qgram"`` or ``"cosine"`` (character bigrams). Columns not named use
            :data:`DEFAULT_METHOD` (Jaro-Winkler).

    Returns:
        float32 array of shape ``(m, len(columns))``. Identical non-empty strings give 1. If either value
        of a pair is missing (in particular when both are ``""``), the similarity is
        :data:`MISSING_SIMILARITY` (0): the values are passed to recordlinkage as NaN and its
        ``missing_value`` applies, so two empty fields are never counted as agreeing.

    Raises:
        ValueError: on an empty or duplicated ``columns``, a column missing from ``records``, a ``methods``
            entry for a column that is not compared or with an unknown method, or malformed ``pairs``.

    The similarities come from :class:`recordlinkage.Compare` (jellyfish for the edit-based measures,
    scikit-learn bigram counts for q-gram and cosine). Each distinct pair of values of a column is compared
    only once, which makes low-cardinality columns (state, postcode, ...) almost free.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("columns must name at least one column to compare")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ValueError(f"columns are compared more than once: {duplicated}")
    absent = [c for c in columns if c not in records.columns]
    if absent:
        raise ValueError(f"columns not in records: {absent}; available: {list(records.columns)}")
    resolved = _resolve_methods(columns, methods)
    pair_arr = _check_pairs(pairs, len(records))

    features = np.zeros((len(pair_arr), len(columns)), dtype=np.float32)
    if len(pair_arr) == 0:
        return features
    for j, (column, method) in enumerate(zip(columns, resolved, strict=True)):
        values = records[column]  # factorised by position, the index plays no part
        features[:, j] = _column_similarity(values, pair_arr, method)
    return features


# ---------------------------------------------------------------------------------------------------------
# Classifiers
# ---------------------------------------------------------------------------------------------------------


def _check_features(features: np.ndarray, name: str, n_features: int | None = None) -> np.ndarray:
    """Validate a 2-D finite feature matrix and return it as float64."""
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (pairs, features), got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features, expected {n_features}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def logistic_regression_baseline(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Supervised baseline: logistic regression on comparison vectors, match probability per eval pair.

    Uses :class:`recordlinkage.LogisticRegressionClassifier`: it offers probabilities through ``prob()``
    (its scikit-learn adapter calls ``predict_proba`` of the wrapped
    :class:`sklearn.linear_model.LogisticRegression`), so no direct scikit-learn fallback is needed. The
    kernel keeps scikit-learn's defaults (L2 penalty, ``C=1``, lbfgs, no class re-weighting), which is
    stable with label budgets of a few dozen pairs; ``seed`` is passed as ``random_state`` (lbfgs itself
    is deterministic).

    Args:
        train_features: ``(n, d)`` comparison vectors of the labelled pairs.
        train_labels: ``(n,)`` labels, 1 (or True) for a match and 0 for a non-match.
        eval_features: ``(m, d)`` comparison vectors of the pairs to score.
        seed: random state of the scikit-learn kernel.

    Returns:
        float64 array of shape ``(m,)`` with the match probability of each eval pair.

    Raises:
        ValueError: on malformed arrays, labels other than 0/1, or when the labels hold a single class
            (the message gives the number of matches and non-matches).
    """
    x_train = _check_features(train_features, "train_features")
    x_eval = _check_features(eval_features, "eval_features", n_features=x_train.shape[1])
    labels = np.asarray(train_labels)
    if labels.ndim != 1 or len(labels) != len(x_train):
        raise ValueError(f"train_labels must have shape ({len(x_train)},), got {labels.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("train_labels must be 0 (non-match) or 1 (match)")
    labels = labels.astype(np.int64)
    n_matches = int(labels.sum())
    n_non_matches = len(labels) - n_matches
    if n_matches == 0 or n_non_matches == 0:
        raise ValueError(
            "logistic regression needs labelled matches and non-matches, "
            f"got {n_matches} matches and {n_non_matches} non-matches"
        )
    if len(x_eval) == 0:
        return np.zeros(0, dtype=np.float64)

    # recordlinkage takes the comparison vectors indexed by pair and the true matches as an index subset.
    train_index = pd.MultiIndex.from_arrays([np.arange(len(x_train)), np.arange(len(x_train))])
    train_frame = pd.DataFrame(x_train, index=train_index)
    classifier = recordlinkage.LogisticRegressionClassifier(random_state=seed)
    classifier.fit(train_frame, train_index[labels == 1])
    return classifier.prob(pd.DataFrame(x_eval)).to_numpy(dtype=np.float64)


def ecm_baseline(eval_features: np.ndarray, threshold: float = 0.85) -> np.ndarray:
    """Unsupervised baseline: Fellegi-Sunter model fitted by ECM, match probability per pair.

    Binarisation: every similarity strictly above ``threshold`` counts as agreement (1), everything else,
    including missing values (similarity 0), as disagreement (0). This is
    :class:`recordlinkage.ECMClassifier`'s own ``binarize`` (scikit-learn's ``binarize``, ``x > threshold``).
    The classifier is fitted on these same pairs (it needs no labels) with its default ``"jaro"``
    initialisation (prior match share 0.1, m = 0.9, u = 0.1), which is deterministic, and ``prob()`` gives
    the posterior match probability of every pair.

    Degenerate fits are returned as recordlinkage gives them, without raising: e.g. a single agreement
    pattern, or a pattern the fitted model gives zero likelihood under both classes (its posterior is
    0/0). Such NaN posteriors are reported as 0 (no evidence of a match); the numerical warnings of the
    fit are silenced.

    Args:
        eval_features: ``(m, d)`` comparison vectors, similarities in ``[0, 1]``.
        threshold: agreement threshold of the binarisation.

    Returns:
        float64 array of shape ``(m,)`` with the match probability of each pair.
    """
    x_eval = _check_features(eval_features, "eval_features")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if len(x_eval) == 0:
        return np.zeros(0, dtype=np.float64)
    frame = pd.DataFrame(x_eval)
    classifier = recordlinkage.ECMClassifier(binarize=float(threshold))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        classifier.fit(frame)
        probs = classifier.prob(frame).to_numpy(dtype=np.float64)
    return np.clip(np.nan_to_num(probs, nan=0.0), 0.0, 1.0)


def classic_baselines(
    records: pd.DataFrame,
    columns: Sequence[str],
    train_pairs: np.ndarray,
    train_labels: np.ndarray,
    eval_pairs: np.ndarray,
    seed: int = 0,
    *,
    methods: Mapping[str, str] | None = None,
    ecm_threshold: float = 0.85,
) -> dict[str, np.ndarray]:
    """Run both classic baselines for one train / eval split.

    The comparison vectors are computed once for the train pairs and once for the eval pairs
    (:func:`comparison_features`), then logistic regression is trained on the labelled train pairs and ECM
    is fitted, unsupervised, on the eval pairs.

    Args:
        records: the records (see :func:`comparison_features`).
        columns: the attribute columns to compare.
        train_pairs: ``(n, 2)`` positional pairs with labels.
        train_labels: ``(n,)`` 0/1 labels of ``train_pairs``.
        eval_pairs: ``(m, 2)`` positional pairs to score.
        seed: random state of the logistic regression.
        methods: optional per-column comparison methods.
        ecm_threshold: binarisation threshold of ECM.

    Returns:
        ``{"logistic_regression": probs, "ecm": probs}``, each a float64 array of shape ``(m,)``.
    """
    train_features = comparison_features(records, columns, train_pairs, methods)
    eval_features = comparison_features(records, columns, eval_pairs, methods)
    return {
        "logistic_regression": logistic_regression_baseline(
            train_features, train_labels, eval_features, seed=seed
        ),
        "ecm": ecm_baseline(eval_features, threshold=ecm_threshold),
    }
