"""Candidate pairs: which record pairs are worth scoring, at a cost near-linear in the number of records.

Blocking passes are plain dicts (as read from a TOML config), checked by :func:`validate_passes`:

``{"method": "block", "on": ["postcode"], "prefix": 0}``
    Standard blocking: records whose key (the values of the ``on`` columns, or their first ``prefix``
    characters when ``prefix`` > 0) is equal are paired. A record with any ``on`` column empty has no key
    and is paired by this pass with nobody (missing values are not evidence of a match).
``{"method": "sorted", "on": ["surname", "given_name"], "window": 5}``
    Sorted neighbourhood: records are sorted on the ``on`` values joined into one key (ties keep record
    order) and each record is paired with the next ``window - 1`` records. For linkage A and B are sorted
    together and only pairs across the two tables are kept. A record whose ``on`` columns are all empty is
    left out.

:func:`candidate_pairs` returns the union of all passes; :func:`knn_pairs` pairs records whose embeddings
are near; :func:`blocking_quality` says how many true pairs survive (pairs completeness) and how much of
the full comparison space is skipped (reduction ratio). Every pair array here has the format of
:meth:`RecordTable.true_pairs`: ``(m, 2)`` int64, ``(i, j)`` with ``i < j`` for deduplication, ``(a, b)``
with ``a`` in table A and ``b`` in table B for linkage, unique and sorted lexicographically.

Default FEBRL passes
--------------------
:data:`FEBRL_PASSES` blocks on the exact postcode, the exact date of birth and the exact social security
id, plus a sorted neighbourhood of window 5 on surname + given name. Each code alone keeps only 76-91 % of
the true pairs (FEBRL corrupts some field of most duplicates), but a true pair is lost only when all three
codes are corrupted and its names are too. Measured with this module (the three blocks alone reach
0.9959 on febrl3 and 0.9986 on febrl4; the sorted pass adds the pairs whose codes all differ):

=========  ==================  ===============  ===============
data set   pairs completeness  reduction ratio  candidate pairs
=========  ==================  ===============  ===============
febrl1     1.0000              0.99076           4 613
febrl2     0.9984              0.99732          33 517
febrl3     0.9983              0.99729          33 828
febrl4     0.9996              0.99811          47 248
=========  ==================  ===============  ===============

On 100 000 records (febrl3 copied 20 times with random one-character edits) these passes yield 6.5 M
pairs in about 2 s on one core: the cost is a few sorts of n keys plus the pairs themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from kd_dedup.tables import RecordTable, pairs_within_groups

__all__ = [
    "DEFAULT_MAX_PAIRS",
    "EXACT_KNN_LIMIT",
    "FEBRL_PASSES",
    "METHODS",
    "blocking_quality",
    "candidate_pairs",
    "canonical_pairs",
    "isin_sorted",
    "key_groups",
    "knn_pairs",
    "union_pairs",
    "unique_codes",
    "validate_passes",
]

#: Blocking methods and the keys each accepts (with their defaults).
METHODS: dict[str, dict[str, Any]] = {
    "block": {"prefix": 0},
    "sorted": {"window": 5},
}

#: The default passes for the FEBRL sets (see the module docstring for their measured quality).
FEBRL_PASSES: list[dict[str, Any]] = [
    {"method": "block", "on": ["postcode"], "prefix": 0},
    {"method": "block", "on": ["date_of_birth"], "prefix": 0},
    {"method": "block", "on": ["soc_sec_id"], "prefix": 0},
    {"method": "sorted", "on": ["surname", "given_name"], "window": 5},
]

#: Up to this many searched records :func:`knn_pairs` is exact; above, it searches an inverted-file index.
EXACT_KNN_LIMIT = 20_000

#: The most pairs one pass may produce before :func:`candidate_pairs` stops with an error (16 bytes each).
DEFAULT_MAX_PAIRS = 50_000_000

#: Joins the values of several ``on`` columns; below every printable character, so the joined key sorts
#: as the tuple of values would.
_SEPARATOR = "\x1f"

_EMPTY = np.zeros((0, 2), dtype=np.int64)


def validate_passes(passes: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Check blocking passes against the table's ``columns`` and return them with defaults filled in.

    Raises ValueError naming the pass (by index) and the key at fault: not a table, an unknown method or
    key, ``on`` empty or naming an unknown column, ``prefix`` < 0, ``window`` < 2.
    """
    if isinstance(passes, Mapping | str) or not isinstance(passes, Sequence):
        raise ValueError("blocking passes must be a list of tables (dicts), one per pass")
    if not passes:
        raise ValueError("blocking needs at least one pass")
    checked = []
    for index, spec in enumerate(passes):
        where = f"blocking pass {index}"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: must be a table (dict) with 'method' and 'on', got {spec!r}")
        method = spec.get("method")
        if method not in METHODS:
            raise ValueError(f"{where}: method {method!r} is unknown; expected one of {sorted(METHODS)}")
        allowed = {"method", "on", *METHODS[method]}
        for key in spec:
            if key not in allowed:
                raise ValueError(
                    f"{where}: key {key!r} is unknown for method {method!r}; expected keys {sorted(allowed)}"
                )
        on = spec.get("on")
        if isinstance(on, str):
            on = [on]
        if not isinstance(on, Sequence) or not on or not all(isinstance(c, str) for c in on):
            raise ValueError(f"{where}: key 'on' must be a non-empty list of column names, got {on!r}")
        for column in on:
            if column not in columns:
                raise ValueError(
                    f"{where}: key 'on' names the unknown column {column!r}; the table's columns are "
                    f"{list(columns)}"
                )
        result: dict[str, Any] = {"method": method, "on": list(on)}
        for key, default in METHODS[method].items():
            value = spec.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{where}: key {key!r} must be an integer, got {value!r}")
            if key == "prefix" and value < 0:
                raise ValueError(f"{where}: key 'prefix' must be >= 0 (0 = whole values), got {value}")
            if key == "window" and value < 2:
                raise ValueError(
                    f"{where}: key 'window' must be >= 2 (a window of 1 pairs nobody), got {value}"
                )
            result[key] = int(value)
        checked.append(result)
    return checked


def unique_codes(codes: np.ndarray) -> np.ndarray:
    """Sorted unique values of an int64 array (sort + neighbour test; numpy 2's hash-based
    ``np.unique`` is several times slower on millions of pair codes)."""
    codes = np.sort(np.asarray(codes, dtype=np.int64))
    if len(codes) < 2:
        return codes
    keep = np.empty(len(codes), dtype=bool)
    keep[0] = True
    np.not_equal(codes[1:], codes[:-1], out=keep[1:])
    return codes[keep]


def isin_sorted(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Whether each of ``codes`` is in ``sorted_codes`` (sorted, unique), by binary search."""
    if len(sorted_codes) == 0:
        return np.zeros(len(codes), dtype=bool)
    where = np.searchsorted(sorted_codes, codes)
    where[where == len(sorted_codes)] = 0
    return sorted_codes[where] == codes


def _encode(pairs: np.ndarray, n: int) -> np.ndarray:
    return pairs[:, 0] * n + pairs[:, 1]


def _decode(codes: np.ndarray, n: int) -> np.ndarray:
    return np.stack([codes // n, codes % n], axis=1).astype(np.int64)


def _as_pairs(pairs: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(pairs)
    if array.size == 0:
        return _EMPTY
    if array.ndim != 2 or array.shape[1] != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be an (m, 2) integer array of record positions, got {array.shape}")
    if array.min() < 0:
        raise ValueError(f"{what} hold a negative record position ({array.min()})")
    return array.astype(np.int64, copy=False)


def union_pairs(*arrays: np.ndarray) -> np.ndarray:
    """The unique pairs of all ``arrays`` (each ``(m, 2)`` integer), sorted lexicographically, int64.

    Pairs are taken as they are oriented; pass arrays of one format (all from this module or
    :meth:`RecordTable.true_pairs`).
    """
    parts = [_as_pairs(a, f"pair array {i}") for i, a in enumerate(arrays)]
    parts = [p for p in parts if len(p)]
    if not parts:
        return _EMPTY.copy()
    n = max(int(p.max()) for p in parts) + 1
    return _decode(unique_codes(np.concatenate([_encode(p, n) for p in parts])), n)


def pairs_beyond(base: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """The unique pairs of ``extra`` that ``base`` lacks, sorted, int64 (both in this module's format)."""
    base, extra = _as_pairs(base, "base pairs"), _as_pairs(extra, "extra pairs")
    if not len(extra):
        return _EMPTY.copy()
    n = int(max(base.max(initial=-1), extra.max())) + 1
    codes = unique_codes(_encode(extra, n))
    return _decode(codes[~isin_sorted(unique_codes(_encode(base, n)), codes)], n)


def text_embedding(table: RecordTable, dimensions: int = 64, seed: int = 0) -> np.ndarray:
    """Unit rows ``(n, <= dimensions)`` that need no trained model: the TF-IDF of each record's
    character 2- and 3-grams (its attributes joined by spaces; scikit-learn's ``char_wb``), reduced by
    a truncated SVD drawn with ``seed``. Records that share many n-grams are near; for
    :func:`knn_pairs`."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    text = table.records[list(table.columns)].astype(str).agg(" ".join, axis=1)
    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3)).fit_transform(text)
    width = min(dimensions, tfidf.shape[1] - 1, len(table) - 1)
    reduced = TruncatedSVD(width, random_state=seed).fit_transform(tfidf) if width >= 1 else tfidf.toarray()
    return normalize(reduced).astype(np.float32)


def _key(records: pd.DataFrame, on: Sequence[str], prefix: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The joined key per record and, per record, whether any / all of its ``on`` values are empty."""
    values = [records[c] if prefix <= 0 else records[c].str.slice(0, prefix) for c in on]
    empty = np.stack([(v == "").to_numpy() for v in values], axis=1)
    key = values[0]
    for value in values[1:]:
        key = key + _SEPARATOR + value
    return key.to_numpy(dtype=object), empty


def key_groups(records: pd.DataFrame, on: Sequence[str], prefix: int = 0) -> np.ndarray:
    """Each record's group (int64) under a ``block`` pass's key on ``on`` (and ``prefix``): records with
    equal keys share a group; a record with any ``on`` value empty has no key and gets -1."""
    key, empty = _key(records, on, prefix)
    groups = pd.factorize(key)[0].astype(np.int64)
    groups[empty.any(axis=1)] = -1
    return groups


def _block_pass(table: RecordTable, spec: dict[str, Any], max_pairs: int) -> np.ndarray:
    groups = key_groups(table.records, spec["on"], spec["prefix"])
    return pairs_within_groups(groups, table.side, max_pairs=max_pairs)


def _sorted_pass(table: RecordTable, spec: dict[str, Any]) -> np.ndarray:
    key, empty = _key(table.records, spec["on"])
    kept = np.flatnonzero(~empty.all(axis=1))
    order = kept[np.argsort(key[kept].astype(str), kind="stable")].astype(np.int64)
    n = len(table)
    parts = []
    for step in range(1, spec["window"]):
        left, right = order[:-step], order[step:]
        if table.side is None:
            parts.append(np.minimum(left, right) * n + np.maximum(left, right))
        else:
            cross = table.side[left] != table.side[right]
            left, right = left[cross], right[cross]
            a_first = table.side[left] == 0
            parts.append(np.where(a_first, left, right) * n + np.where(a_first, right, left))
    if not parts:
        return _EMPTY.copy()
    return _decode(unique_codes(np.concatenate(parts)), n)


def candidate_pairs(
    table: RecordTable, passes: Sequence[Mapping[str, Any]], *, max_pairs: int = DEFAULT_MAX_PAIRS
) -> np.ndarray:
    """The union of the pairs of every blocking pass over ``table`` (format of ``table.true_pairs()``).

    ``passes`` are checked with :func:`validate_passes` first. A ``block`` pass whose blocks would yield
    more than ``max_pairs`` pairs (a key shared by too many records, e.g. ``state``) raises ValueError
    naming the pass instead of exhausting memory.
    """
    checked = validate_passes(passes, table.columns)
    results = []
    for index, spec in enumerate(checked):
        if spec["method"] == "block":
            try:
                results.append(_block_pass(table, spec, max_pairs))
            except ValueError as exc:
                raise ValueError(
                    f"{table.name}: blocking pass {index} ({spec['method']} on {spec['on']}): {exc}; "
                    f"use a more selective key (more columns, a longer prefix) or raise max_pairs"
                ) from None
        else:
            results.append(_sorted_pass(table, spec))
    return union_pairs(*results)


def knn_pairs(
    embeddings: np.ndarray,
    k: int,
    side: np.ndarray | None = None,
    *,
    chunk_size: int = 2048,
    exact_limit: int = EXACT_KNN_LIMIT,
    probes: int = 3,
) -> np.ndarray:
    """Each record paired with its ``k`` nearest neighbours by cosine distance (L2 on normalised rows).

    Deduplication (``side`` None): neighbours among the other records. Linkage: A records' neighbours
    among B and B records' neighbours among A, cross pairs only. ``k`` is capped at the number of
    candidates there are. Returns the format of :meth:`RecordTable.true_pairs`.

    Up to ``exact_limit`` searched records the search is exact (scikit-learn, queries ``chunk_size`` at a
    time to bound memory): its cost grows with the square of the records. Above it, an inverted-file index
    keeps the cost near ``n ** 1.5``: ``sqrt(n)`` cells from mini-batch k-means over the searched
    records, each record filed in its nearest cell, each query compared exactly with the records of its
    ``probes`` nearest cells only. Near duplicates, whose embeddings almost coincide, share a cell or a
    neighbouring one; a far neighbour may be missed, which for blocking is what matters least.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (records x dimensions), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    n = len(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    if side is None:
        if n < 2:
            return _EMPTY.copy()
        search = _neighbour_pairs if n <= exact_limit else partial(_cell_neighbour_pairs, probes=probes)
        return search(x, np.arange(n), np.arange(n), k, chunk_size, same=True, n=n, swap=False)
    side = np.asarray(side)
    if side.shape != (n,):
        raise ValueError(f"side must have one value per embedding ({n}), got shape {side.shape}")
    in_a, in_b = np.flatnonzero(side == 0), np.flatnonzero(side == 1)
    if len(in_a) + len(in_b) != n:
        raise ValueError("side must hold only 0 (table A) and 1 (table B)")
    if not len(in_a) or not len(in_b):
        return _EMPTY.copy()
    search = (
        _neighbour_pairs
        if max(len(in_a), len(in_b)) <= exact_limit
        else partial(_cell_neighbour_pairs, probes=probes)
    )
    a_to_b = search(x, in_a, in_b, k, chunk_size, same=False, n=n, swap=False)
    b_to_a = search(x, in_b, in_a, k, chunk_size, same=False, n=n, swap=True)
    return union_pairs(a_to_b, b_to_a)


def _neighbour_pairs(
    x: np.ndarray,
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    chunk_size: int,
    *,
    same: bool,
    n: int,
    swap: bool,
) -> np.ndarray:
    """Pairs (query, neighbour) over positions; ``same``: queries are the candidates, self excluded."""
    k = min(k, len(candidates) - 1 if same else len(candidates))
    if k < 1:
        return _EMPTY.copy()
    asked = k + 1 if same else k
    index = NearestNeighbors(n_neighbors=asked).fit(x[candidates])
    codes = []
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start : start + chunk_size]
        found = candidates[index.kneighbors(x[chunk], return_distance=False)]
        query = np.broadcast_to(chunk[:, None], found.shape)
        if same:
            # Drop the query itself, wherever ties put it; rows without it keep their first k.
            keep = found != query
            keep &= np.cumsum(keep, axis=1) <= k
            query, found = query[keep], found[keep]
        codes.append(_pair_codes(query.ravel(), found.ravel(), n, same=same, swap=swap))
    return _decode(unique_codes(np.concatenate(codes)), n)


def _pair_codes(query: np.ndarray, found: np.ndarray, n: int, *, same: bool, swap: bool) -> np.ndarray:
    """Codes ``i * n + j`` of (query, neighbour) pairs in the orientation of :meth:`RecordTable.true_pairs`:
    ``i < j`` within one table (``same``), else A first (the query is in B when ``swap``)."""
    if same:
        return np.minimum(query, found) * n + np.maximum(query, found)
    left, right = (found, query) if swap else (query, found)
    return left * n + right


def _cell_neighbour_pairs(
    x: np.ndarray,
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    chunk_size: int,
    *,
    same: bool,
    n: int,
    swap: bool,
    probes: int,
) -> np.ndarray:
    """:func:`_neighbour_pairs` through an inverted-file index (see :func:`knn_pairs`)."""
    from sklearn.cluster import MiniBatchKMeans

    k = min(k, len(candidates) - 1 if same else len(candidates))
    if k < 1:
        return _EMPTY.copy()
    x = x.astype(np.float32)
    cells = max(1, round(np.sqrt(len(candidates))))
    kmeans = MiniBatchKMeans(n_clusters=cells, random_state=0, batch_size=4096, n_init=1)
    kmeans.fit(x[candidates])
    centres = kmeans.cluster_centers_.astype(np.float32)
    filed = kmeans.predict(x[candidates])
    probes = min(probes, cells)
    probed = np.concatenate(
        [
            np.argpartition(-(x[queries[i : i + chunk_size]] @ centres.T), probes - 1, axis=1)[:, :probes]
            for i in range(0, len(queries), chunk_size)
        ]
    )
    query_of = np.repeat(np.arange(len(queries)), probes)
    cell_of = probed.ravel()
    order = np.argsort(cell_of, kind="stable")
    query_of, cell_of = query_of[order], cell_of[order]
    starts = np.searchsorted(cell_of, np.arange(cells + 1))
    members_order = np.argsort(filed, kind="stable")
    member_starts = np.searchsorted(filed[members_order], np.arange(cells + 1))
    found_q, found_c, found_sim = [], [], []
    for cell in range(cells):
        asking = queries[query_of[starts[cell] : starts[cell + 1]]]
        members = candidates[members_order[member_starts[cell] : member_starts[cell + 1]]]
        if not len(asking) or not len(members):
            continue
        sims = x[asking] @ x[members].T
        if same:
            sims[asking[:, None] == members[None, :]] = -np.inf  # never one's own neighbour
        take = min(k, len(members))
        best = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        found_q.append(np.repeat(asking, take))
        found_c.append(members[best].ravel())
        found_sim.append(np.take_along_axis(sims, best, axis=1).ravel())
    if not found_q:
        return _EMPTY.copy()
    query, neighbour, sim = np.concatenate(found_q), np.concatenate(found_c), np.concatenate(found_sim)
    keep = np.isfinite(sim)
    query, neighbour, sim = query[keep], neighbour[keep], sim[keep]
    # Each query's k best over its probed cells (a neighbour found in two cells counts once).
    order = np.lexsort((-sim, neighbour, query))
    query, neighbour, sim = query[order], neighbour[order], sim[order]
    first = np.ones(len(query), dtype=bool)
    first[1:] = (query[1:] != query[:-1]) | (neighbour[1:] != neighbour[:-1])
    query, neighbour, sim = query[first], neighbour[first], sim[first]
    order = np.lexsort((-sim, query))
    query, neighbour = query[order], neighbour[order]
    rank = np.arange(len(query)) - np.searchsorted(query, query)
    query, neighbour = query[rank < k], neighbour[rank < k]
    return _decode(unique_codes(_pair_codes(query, neighbour, n, same=same, swap=swap)), n)


def canonical_pairs(pairs: np.ndarray, table: RecordTable) -> np.ndarray:
    """``pairs`` oriented as :meth:`RecordTable.true_pairs` orients them (``i < j``, or A first), not
    deduplicated; ValueError for a position out of range or a linkage pair within one table."""
    pairs = _as_pairs(pairs, "candidate pairs")
    n = len(table)
    if len(pairs) and pairs.max() >= n:
        raise ValueError(f"candidate pairs hold position {pairs.max()}; {table.name} has {n} records")
    if table.side is None:
        return np.stack([pairs.min(axis=1), pairs.max(axis=1)], axis=1)
    left_side, right_side = table.side[pairs[:, 0]], table.side[pairs[:, 1]]
    if (left_side == right_side).any():
        row = int(np.flatnonzero(left_side == right_side)[0])
        raise ValueError(
            f"candidate pair {row} {tuple(pairs[row].tolist())} joins two records of one table; "
            f"linkage pairs join table A and table B"
        )
    a_first = left_side == 0
    return np.stack(
        [np.where(a_first, pairs[:, 0], pairs[:, 1]), np.where(a_first, pairs[:, 1], pairs[:, 0])], axis=1
    )


def blocking_quality(pairs: np.ndarray, table: RecordTable) -> dict[str, float | int]:
    """Blocking quality of candidate ``pairs`` against ``table``'s ground truth.

    Returns ``candidate_pairs`` (unique pairs), ``pairs_completeness`` (share of ``table.true_pairs()``
    among the candidates; 1.0 when there are no true pairs, as none is missed) and ``reduction_ratio``
    (``1 - candidate_pairs / table.possible_pairs()``; 1.0 when no pair is possible). Raises ValueError
    when the table has no ground truth.
    """
    truth = table.true_pairs()
    n = max(len(table), 1)
    codes = unique_codes(_encode(canonical_pairs(pairs, table), n))
    found = int(isin_sorted(codes, _encode(truth, n)).sum())
    possible = table.possible_pairs()
    return {
        "candidate_pairs": len(codes),
        "pairs_completeness": found / len(truth) if len(truth) else 1.0,
        "reduction_ratio": 1.0 - len(codes) / possible if possible else 1.0,
    }
