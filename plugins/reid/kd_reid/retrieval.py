"""Re-ID retrieval: feature distances, Market-1501 ranking metrics, k-reciprocal re-ranking.

Three pieces, each usable on its own (feature extraction lives elsewhere):

* :func:`pairwise_distances` turns query and gallery features into a ``[Q, G]`` distance matrix (features are
  L2-normalised first, squared Euclidean or cosine distance).
* :func:`evaluate_ranking` scores a distance matrix under the Market-1501 protocol: CMC (rank-k accuracy),
  mAP (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015) and mINP (Ye et al.,
  "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021).
* :func:`k_reciprocal_rerank` re-ranks with k-reciprocal encoding (Zhong, Zheng, Cao, Li, "Re-ranking Person
  Re-identification with k-reciprocal Encoding", CVPR 2017).

Conventions of the Market-1501 protocol used here: identity ``-1`` marks junk gallery images (ignored
entirely), identity ``0`` marks distractors (kept, always a wrong match), and a gallery image of the query's
identity taken by the query's own camera is junk for that query (it would be too easy a match).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DISTANCE_METRICS",
    "RankingResult",
    "evaluate_ranking",
    "k_reciprocal_rerank",
    "pairwise_distances",
]

DISTANCE_METRICS: tuple[str, ...] = ("euclidean", "cosine")
"""The metrics :func:`pairwise_distances` accepts."""

JUNK_PID = -1
"""Gallery identity of a junk image: never a match, never a mistake (Market-1501)."""

DISTRACTOR_PID = 0
"""Gallery identity of a distractor: kept in the ranking, always a wrong match (Market-1501)."""

# evaluate_ranking works on blocks of queries of about this many distance entries (a copy and a sorted
# copy of the block are alive at once): 4M entries is 32 MB per copy in float64.
_RANKING_BLOCK_ENTRIES = 1 << 22


# ---------------------------------------------------------------------------------------------------------
# Distances
# ---------------------------------------------------------------------------------------------------------


def pairwise_distances(
    query: torch.Tensor,
    gallery: torch.Tensor,
    metric: str = "euclidean",
    *,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Distances between every query and every gallery feature, after L2-normalising both.

    Each feature vector is first divided by its L2 norm (``torch.nn.functional.normalize``; an all-zero
    vector stays zero), so the distances ignore the feature scale. Then, for normalised ``q`` and ``g``:

    * ``"euclidean"``: the *squared* Euclidean distance ``|q|^2 + |g|^2 - 2 q.g`` (in ``[0, 4]``), computed
      with one matrix product and clamped at 0 against rounding;
    * ``"cosine"``: ``1 - q.g`` (in ``[0, 2]``).

    For non-zero features the two are proportional: ``euclidean = 2 * cosine``; they rank the gallery
    identically.

    The queries are processed ``chunk_size`` at a time, so besides the ``[Q, G]`` result only a
    ``[chunk_size, G]`` block is ever allocated. The computation runs without autograd (it is meant for
    evaluation), on the features' device, in float64 for float64 features and float32 otherwise.

    Args:
        query: ``[Q, D]`` query features.
        gallery: ``[G, D]`` gallery features.
        metric: ``"euclidean"`` or ``"cosine"``.
        chunk_size: number of queries per block (keyword only).

    Returns:
        ``[Q, G]`` distances, smaller is more similar.

    Raises:
        ValueError: on an unknown metric, non 2-D features, different feature sizes or ``chunk_size < 1``.
    """
    if metric not in DISTANCE_METRICS:
        allowed = ", ".join(map(repr, DISTANCE_METRICS))
        raise ValueError(f"unknown metric {metric!r}: expected one of {allowed}")
    if query.dim() != 2:
        raise ValueError(f"query must be [Q, D], got shape {tuple(query.shape)}")
    if gallery.dim() != 2:
        raise ValueError(f"gallery must be [G, D], got shape {tuple(gallery.shape)}")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query and gallery features differ in size: query {tuple(query.shape)}, "
            f"gallery {tuple(gallery.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    dtype = torch.float64 if torch.float64 in (query.dtype, gallery.dtype) else torch.float32
    with torch.no_grad():
        g = F.normalize(gallery.detach().to(device=query.device, dtype=dtype), p=2, dim=1)
        g_sq = g.pow(2).sum(dim=1)  # 1 for every non-zero feature, 0 for a zero one
        out = torch.empty(query.shape[0], gallery.shape[0], dtype=dtype, device=query.device)
        for start in range(0, query.shape[0], chunk_size):
            q = F.normalize(query[start : start + chunk_size].detach().to(dtype), p=2, dim=1)
            similarity = q @ g.T
            if metric == "cosine":
                out[start : start + chunk_size] = 1.0 - similarity
            else:
                q_sq = q.pow(2).sum(dim=1, keepdim=True)
                squared = q_sq + g_sq.unsqueeze(0) - 2.0 * similarity
                out[start : start + chunk_size] = squared.clamp_(min=0.0)
    return out


# ---------------------------------------------------------------------------------------------------------
# Ranking metrics
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RankingResult:
    """Retrieval scores of one distance matrix under the Market-1501 protocol.

    Attributes:
        cmc: ``[max_rank]`` cumulative match characteristic: ``cmc[k - 1]`` is the share of valid queries
            whose first correct match is among their top ``k`` (after removing junk). Read-only.
        mAP: mean over valid queries of the average precision.
        mINP: mean over valid queries of the inverse negative penalty.
        num_valid_queries: queries with at least one correct match left after removing junk.
        num_skipped_queries: queries without one; they count in no metric.
        query_ap: ``[Q]`` average precision of every query, NaN for a skipped one. Read-only.
        query_inp: ``[Q]`` inverse negative penalty of every query, NaN for a skipped one. Read-only.

    Equality is identity (the fields hold arrays); compare :meth:`as_dict` outputs instead.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int
    query_ap: np.ndarray
    query_inp: np.ndarray

    def as_dict(self) -> dict[str, float]:
        """The headline numbers as plain floats: ``rank1``, ``rank5``, ``rank10`` (those within ``max_rank``),
        ``mAP`` and ``mINP``, all in ``[0, 1]``."""
        scores = {f"rank{k}": float(self.cmc[k - 1]) for k in (1, 5, 10) if k <= len(self.cmc)}
        scores["mAP"] = float(self.mAP)
        scores["mINP"] = float(self.mINP)
        return scores


def _as_numpy(array: object) -> np.ndarray:
    """A NumPy view or copy of an array-like (torch tensors on any device included)."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _check_labels(
    name: str, labels: object, length: int, axis: str, distances_shape: tuple[int, ...]
) -> np.ndarray:
    """``labels`` as a 1-D int64 array of ``length`` entries, or a ValueError naming it and the shapes."""
    array = _as_numpy(labels)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(
            f"{name} has shape {array.shape}, expected ({length},): one per {axis} of distances "
            f"(shape {distances_shape})"
        )
    integral = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)
    if array.size and not integral and not np.all(np.equal(np.mod(array, 1), 0)):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def evaluate_ranking(
    distances: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_camids: np.ndarray,
    gallery_camids: np.ndarray,
    max_rank: int = 10,
) -> RankingResult:
    """CMC, mAP and mINP of a query x gallery distance matrix under the Market-1501 protocol.

    For each query the gallery is ranked by increasing distance. Ties are broken by gallery index, exactly as
    a stable sort (``np.argsort(..., kind="stable")``) of the row would order them. Then, per query:

    * junk is removed from the ranking: gallery items of identity ``-1``, and items with the query's identity
      *and* the query's camera. The remaining items keep their relative order; ranks count from 1 over them;
    * distractors (identity ``0``) and other identities stay, as wrong matches;
    * the correct matches are the remaining items of the query's identity. A query without any is skipped:
      it counts in no metric, only in ``num_skipped_queries``.

    With the correct matches at ranks ``r_1 < r_2 < ... < r_m`` of a valid query:

    * CMC: the query is a hit at rank ``k`` when ``r_1 <= k``; ``cmc[k - 1]`` is the share of hits;
    * AP (Zheng et al. 2015): the mean over the matches of the precision at each match,
      ``AP = (1 / m) * sum_j j / r_j``;
    * INP (Ye et al. 2021): ``m / r_m``, the share of the list down to the hardest (last) correct match that
      is correct; mINP is its mean.

    Implementation: no full argsort is needed (a stable argsort of 3,000 x 15,000 alone takes seconds). Each
    block of queries gets its junk set to NaN (NaN sorts last, so it drops out of every count), its rows are
    sorted by value, and the rank of each correct match is one plus the number of remaining items with a
    smaller distance (a binary search in the sorted row). Only a row where a correct match ties with
    another item is ranked by a stable argsort instead. The loop in Python is over queries, never over
    gallery items.

    Args:
        distances: ``[Q, G]`` distances, smaller is more similar (a NumPy array or anything ``np.asarray``
            takes, torch tensors included). NaN is refused; infinities are allowed.
        query_pids: ``[Q]`` integer identities of the queries.
        gallery_pids: ``[G]`` integer identities of the gallery items (``-1`` junk, ``0`` distractor).
        query_camids: ``[Q]`` integer camera ids of the queries.
        gallery_camids: ``[G]`` integer camera ids of the gallery items.
        max_rank: length of the CMC curve (>= 1).

    Returns:
        A :class:`RankingResult`.

    Raises:
        ValueError: on shape mismatches (naming the argument and the shapes), NaN distances, ``max_rank < 1``,
            or when no query has a correct match left.
    """
    dist = _as_numpy(distances)
    if dist.ndim != 2:
        raise ValueError(f"distances must be [Q, G], got shape {dist.shape}")
    if not (np.issubdtype(dist.dtype, np.floating) or np.issubdtype(dist.dtype, np.integer)):
        raise ValueError(f"distances must be numeric, got dtype {dist.dtype}")
    if not np.issubdtype(dist.dtype, np.floating):
        dist = dist.astype(np.float64)
    num_q, num_g = dist.shape
    q_pids = _check_labels("query_pids", query_pids, num_q, "row", dist.shape)
    g_pids = _check_labels("gallery_pids", gallery_pids, num_g, "column", dist.shape)
    q_cams = _check_labels("query_camids", query_camids, num_q, "row", dist.shape)
    g_cams = _check_labels("gallery_camids", gallery_camids, num_g, "column", dist.shape)
    if isinstance(max_rank, bool) or not isinstance(max_rank, int | np.integer) or max_rank < 1:
        raise ValueError(f"max_rank must be an integer >= 1, got {max_rank!r}")
    if np.isnan(dist).any():
        raise ValueError("distances contain NaN")

    query_ap = np.full(num_q, np.nan)
    query_inp = np.full(num_q, np.nan)
    first_rank = np.zeros(num_q, dtype=np.int64)  # 0 for a skipped query
    gallery_is_junk = g_pids == JUNK_PID
    block = max(1, _RANKING_BLOCK_ENTRIES // max(num_g, 1))

    for start in range(0, num_q, block):
        stop = min(start + block, num_q)
        same_pid = g_pids[None, :] == q_pids[start:stop, None]
        junk = (same_pid & (g_cams[None, :] == q_cams[start:stop, None])) | gallery_is_junk[None, :]
        correct = same_pid & ~junk

        # NaN sorts after everything: junk drops out of every count.
        masked = np.where(junk, np.array(np.nan, dtype=dist.dtype), dist[start:stop])
        ordered = np.sort(masked, axis=1)

        rows, cols = np.nonzero(correct)  # row-major: grouped by query, columns increasing
        if rows.size == 0:
            continue
        values = masked[rows, cols]
        ranks = np.empty(rows.size, dtype=np.int64)
        bounds = np.searchsorted(rows, np.arange(stop - start + 1))
        for row in np.flatnonzero(bounds[1:] > bounds[:-1]):
            lo, hi = bounds[row], bounds[row + 1]
            v = values[lo:hi]
            below = np.searchsorted(ordered[row], v, side="left")
            if np.any(np.searchsorted(ordered[row], v, side="right") - below > 1):
                # A match ties with another item: rank this row by a stable argsort (lower gallery index
                # first among equal distances; the NaN junk still sorts last).
                slot = np.empty(num_g, dtype=np.int64)
                slot[np.argsort(masked[row], kind="stable")] = np.arange(num_g)
                below = slot[cols[lo:hi]]
            ranks[lo:hi] = below + 1

        # Order each query's matches by rank: ranks are distinct within a query.
        order = np.lexsort((ranks, rows))
        rows, ranks = rows[order], ranks[order]
        counts = np.bincount(rows, minlength=stop - start)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        position = np.arange(rows.size) - starts[rows] + 1  # j of the j-th correct match
        valid = counts > 0
        ap_sum = np.bincount(rows, weights=position / ranks, minlength=stop - start)
        query_ap[start:stop][valid] = ap_sum[valid] / counts[valid]
        last_rank = ranks[starts[valid] + counts[valid] - 1]
        query_inp[start:stop][valid] = counts[valid] / last_rank
        first_rank[start:stop][valid] = ranks[starts[valid]]

    valid_queries = ~np.isnan(query_ap)
    num_valid = int(valid_queries.sum())
    if num_valid == 0:
        raise ValueError(
            f"no valid query: none of the {num_q} queries has a correct match in the gallery once junk "
            f"(identity {JUNK_PID}, or same identity and same camera) is removed"
        )
    hits = first_rank[valid_queries]
    cmc = (hits[None, :] <= np.arange(1, max_rank + 1)[:, None]).mean(axis=1)
    for array in (cmc, query_ap, query_inp):
        array.setflags(write=False)
    return RankingResult(
        cmc=cmc,
        mAP=float(query_ap[valid_queries].mean()),
        mINP=float(query_inp[valid_queries].mean()),
        num_valid_queries=num_valid,
        num_skipped_queries=num_q - num_valid,
        query_ap=query_ap,
        query_inp=query_inp,
    )


# ---------------------------------------------------------------------------------------------------------
# k-reciprocal re-ranking
# ---------------------------------------------------------------------------------------------------------


def _nearest(dist: np.ndarray, count: int) -> np.ndarray:
    """``[N, count]`` indices of each row's ``count`` smallest entries, closest first.

    A partial selection (``np.argpartition``) then a sort of the selected entries by (distance, index): exact
    ties *at the boundary* of the selection are resolved by NumPy's selection algorithm (deterministic, but
    not by index); ties inside it are ordered by index.
    """
    n = dist.shape[1]
    if count >= n:
        candidates = np.broadcast_to(np.arange(n), dist.shape)
    else:
        candidates = np.argpartition(dist, count - 1, axis=1)[:, :count]
    picked = np.take_along_axis(dist, candidates, axis=1)
    order = np.lexsort((candidates, picked), axis=1)
    return np.take_along_axis(candidates, order, axis=1)


def _neighbour_matrix(neighbours: np.ndarray, n: int) -> np.ndarray:
    """``[N, N]`` boolean ``M[p, j] = j in neighbours[p]``."""
    member = np.zeros((n, n), dtype=bool)
    np.put_along_axis(member, neighbours, True, axis=1)
    return member


def k_reciprocal_rerank(
    query_gallery: np.ndarray,
    query_query: np.ndarray,
    gallery_gallery: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query x gallery distances with k-reciprocal encoding (Zhong et al., CVPR 2017).

    All ``N = Q + G`` images (queries and gallery together) form one set with the joint distance matrix
    ``d = [[query_query, query_gallery], [query_gallery.T, gallery_gallery]]``. Then:

    1. **k-nearest neighbours.** ``N(p, k)`` is the set of the ``k + 1`` images closest to ``p``, ``p``
       itself included (it is its own closest image, at distance 0), so that ``k`` others remain.
    2. **k-reciprocal neighbours.** ``R(p, k) = {g in N(p, k) : p in N(g, k)}``: the neighbours that also
       have ``p`` among theirs, which are much less often false matches than plain neighbours.
    3. **Expansion.** For every ``q`` in ``R(p, k1)``, the smaller set ``R(q, k1 / 2)`` (``k1 / 2`` rounded
       up) is added to ``p``'s set when it overlaps ``R(p, k1)`` in at least two thirds of its own elements:
       ``|R(p, k1) ∩ R(q, k1/2)| >= 2/3 |R(q, k1/2)|``. This recovers positives that are hard for ``p`` but
       close to its reliable neighbours. The result is ``R*(p, k1)``.
    4. **Encoding.** Each image becomes an ``N``-vector ``V_p`` with ``V_p[g] = exp(-d(p, g))`` (a Gaussian
       kernel of the distance, as the paper writes it, without renormalisation) for ``g in R*(p, k1)`` and 0
       elsewhere: close reciprocal neighbours weigh more.
    5. **Local query expansion.** ``V_p`` is replaced by the mean of ``V_g`` over the ``k2`` images closest
       to ``p`` (``p`` included; ``k2 = 1`` disables the expansion).
    6. **Jaccard distance.** ``d_J(p, g) = 1 - sum_i min(V_p[i], V_g[i]) / sum_i max(V_p[i], V_g[i])``,
       the weighted form of ``1 - |R*(p) ∩ R*(g)| / |R*(p) ∪ R*(g)|``; the sum of the maxima is computed as
       ``sum V_p + sum V_g - sum min``, and the sum of minima only over the entries where ``V_p`` is non-zero.
    7. **Final distance.** ``(1 - lambda_value) * d_J + lambda_value * d`` for the query x gallery block,
       with ``d`` the original ``query_gallery`` distances, unchanged.

    ``k1`` (and ``k2``) larger than ``N - 1`` (``N``) is clamped: every image is then a neighbour. Exact ties
    at a neighbour-set boundary are resolved by NumPy's partial selection (deterministic). The vectors are
    held as a dense ``[N, N]`` array, so memory is a few times that of the joint distance matrix; the
    Jaccard step costs about ``Q * G * (non-zeros per vector)`` operations.

    Args:
        query_gallery: ``[Q, G]`` query-to-gallery distances (e.g. from :func:`pairwise_distances`).
        query_query: ``[Q, Q]`` query-to-query distances.
        gallery_gallery: ``[G, G]`` gallery-to-gallery distances.
        k1: size of the neighbourhoods of the k-reciprocal sets (paper: 20 on Market-1501).
        k2: size of the neighbourhood of the local query expansion (paper: 6).
        lambda_value: weight of the original distance in the final one, in ``[0, 1]`` (paper: 0.3).

    Returns:
        ``[Q, G]`` re-ranked distances (float64), smaller is more similar.

    Raises:
        ValueError: on inconsistent shapes (naming the argument and the shapes), NaN distances, ``k1 < 1``,
            ``k2 < 1`` or ``lambda_value`` outside ``[0, 1]``.
    """
    qg = np.asarray(_as_numpy(query_gallery), dtype=np.float64)
    qq = np.asarray(_as_numpy(query_query), dtype=np.float64)
    gg = np.asarray(_as_numpy(gallery_gallery), dtype=np.float64)
    if qg.ndim != 2:
        raise ValueError(f"query_gallery must be [Q, G], got shape {qg.shape}")
    num_q, num_g = qg.shape
    if qq.shape != (num_q, num_q):
        raise ValueError(
            f"query_query has shape {qq.shape}, expected ({num_q}, {num_q}) to match query_gallery {qg.shape}"
        )
    if gg.shape != (num_g, num_g):
        raise ValueError(
            f"gallery_gallery has shape {gg.shape}, expected ({num_g}, {num_g}) to match "
            f"query_gallery {qg.shape}"
        )
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if np.isnan(qg).any() or np.isnan(qq).any() or np.isnan(gg).any():
        raise ValueError("distances contain NaN")
    if num_q == 0 or num_g == 0:
        return qg.copy()

    n = num_q + num_g
    dist = np.empty((n, n))
    dist[:num_q, :num_q] = qq
    dist[:num_q, num_q:] = qg
    dist[num_q:, :num_q] = qg.T
    dist[num_q:, num_q:] = gg

    # Steps 1-2: k-reciprocal sets, for k1 and for k1 / 2, as boolean matrices R[p, g].
    half = (k1 + 1) // 2
    forward = _nearest(dist, min(k1 + 1, n))
    near_k1 = _neighbour_matrix(forward, n)
    near_half = _neighbour_matrix(forward[:, : min(half + 1, n)], n)
    reciprocal = near_k1 & near_k1.T
    reciprocal_half = near_half & near_half.T

    # Steps 3-4: expanded sets R*(p, k1), Gaussian-kernel weights.
    vectors = np.zeros((n, n))
    for p in range(n):
        members = np.flatnonzero(reciprocal[p])
        expanded = reciprocal[p].copy()
        candidates = reciprocal_half[members]  # rows: R(q, k1/2) of each q in R(p, k1)
        overlap = candidates[:, members].sum(axis=1)
        size = candidates.sum(axis=1)
        for row in np.flatnonzero(3 * overlap >= 2 * size):
            expanded |= candidates[row]
        support = np.flatnonzero(expanded)
        vectors[p, support] = np.exp(-dist[p, support])

    # Step 5: local query expansion over the k2 closest images.
    if k2 > 1:
        closest = forward[:, : min(k2, n)] if k2 <= forward.shape[1] else _nearest(dist, min(k2, n))
        expanded_vectors = np.zeros_like(vectors)
        for column in range(closest.shape[1]):
            expanded_vectors += vectors[closest[:, column]]
        vectors = expanded_vectors / closest.shape[1]

    # Step 6: weighted Jaccard distance, query rows x gallery rows.
    gallery_columns = np.ascontiguousarray(vectors[num_q:].T)  # [N, G]: entry i of every gallery vector
    gallery_mass = vectors[num_q:].sum(axis=1)
    jaccard = np.empty((num_q, num_g))
    for i in range(num_q):
        support = np.flatnonzero(vectors[i])
        shared = np.minimum(gallery_columns[support], vectors[i, support, None]).sum(axis=0)
        jaccard[i] = 1.0 - shared / (vectors[i].sum() + gallery_mass - shared)
    np.clip(jaccard, 0.0, 1.0, out=jaccard)  # rounding can step a hair outside [0, 1]

    # Step 7.
    return (1.0 - lambda_value) * jaccard + lambda_value * qg
