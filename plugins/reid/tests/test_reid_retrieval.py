"""Re-ID retrieval: distances, Market-1501 CMC / mAP / mINP, k-reciprocal re-ranking, checked on numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_reid.retrieval import (
    RankingResult,
    evaluate_ranking,
    k_reciprocal_rerank,
    pairwise_distances,
)

# ---------------------------------------------------------------------------------------------------------
# A case checked by hand
# ---------------------------------------------------------------------------------------------------------
#
# Gallery: index  0  1  2  3  4   5  6  7
GALLERY_PIDS = [1, 1, 2, 0, -1, 1, 2, 3]  # 0 = distractor, -1 = junk
GALLERY_CAMS = [0, 1, 0, 2, 1, 2, 1, 1]
QUERY_PIDS = [1, 2, 3, 1]
QUERY_CAMS = [0, 1, 1, 2]
HAND_DISTANCES = np.array(
    [
        # q0 (pid 1, cam 0): g0 is pid 1 in cam 0 (junk) and would be rank 1; g4 is junk (-1); the distractor
        # g3 comes first among what is left; g2 and g5 tie at 0.5 and g2 (lower index) goes first.
        # Left: g3(-) g1(+) g2(-) g5(+) g6(-) g7(-): matches at ranks 2 and 4.
        [0.1, 0.4, 0.5, 0.3, 0.2, 0.5, 0.7, 0.8],
        # q1 (pid 2, cam 1): g6 (pid 2, cam 1) and g4 (-1) are junk; g2(+) ties with the distractor g3 and
        # goes first by index. Left: g2(+) g3 g7 g1 g5 g0: one match, at rank 1.
        [0.9, 0.6, 0.15, 0.15, 0.1, 0.7, 0.05, 0.2],
        # q2 (pid 3, cam 1): the only pid-3 item, g7, is in cam 1: junk. No match left: skipped.
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0],
        # q3 (pid 1, cam 2): g5 (pid 1, cam 2) and g4 are junk.
        # Left: g7 g0(+) g3 g2 g6 g1(+): matches at ranks 2 and 6.
        [0.2, 0.6, 0.4, 0.3, 0.05, 0.0, 0.5, 0.1],
    ]
)


def hand_result(max_rank: int = 5) -> RankingResult:
    return evaluate_ranking(
        HAND_DISTANCES,
        np.array(QUERY_PIDS),
        np.array(GALLERY_PIDS),
        np.array(QUERY_CAMS),
        np.array(GALLERY_CAMS),
        max_rank=max_rank,
    )


def test_the_hand_built_case_gives_the_numbers_worked_out_by_hand():
    result = hand_result()
    # AP: q0 (1/2 + 2/4) / 2 = 1/2; q1 1; q3 (1/2 + 2/6) / 2 = 5/12. INP: 2/4, 1/1, 2/6.
    np.testing.assert_allclose(result.query_ap, [1 / 2, 1.0, np.nan, 5 / 12], rtol=0, atol=1e-15)
    np.testing.assert_allclose(result.query_inp, [1 / 2, 1.0, np.nan, 1 / 3], rtol=0, atol=1e-15)
    # First matches at ranks 2, 1, 2.
    np.testing.assert_allclose(result.cmc, [1 / 3, 1.0, 1.0, 1.0, 1.0], rtol=0, atol=1e-15)
    assert result.mAP == pytest.approx(23 / 36, abs=1e-15)
    assert result.mINP == pytest.approx(11 / 18, abs=1e-15)
    assert result.num_valid_queries == 3
    assert result.num_skipped_queries == 1
    assert result.as_dict() == pytest.approx({"rank1": 1 / 3, "rank5": 1.0, "mAP": 23 / 36, "mINP": 11 / 18})
    assert all(type(value) is float for value in result.as_dict().values())


def test_each_hand_built_query_alone_gives_its_own_ap():
    for q, (ap, inp) in {0: (1 / 2, 1 / 2), 1: (1.0, 1.0), 3: (5 / 12, 1 / 3)}.items():
        alone = evaluate_ranking(
            HAND_DISTANCES[q : q + 1],
            QUERY_PIDS[q : q + 1],
            GALLERY_PIDS,
            QUERY_CAMS[q : q + 1],
            GALLERY_CAMS,
        )
        assert (alone.mAP, alone.mINP, alone.num_valid_queries) == (pytest.approx(ap), pytest.approx(inp), 1)


def test_without_the_junk_rule_the_same_camera_item_would_have_been_rank_one():
    # Move q0 to a camera of its own: g0 (pid 1, cam 0) is then a correct match at rank 1.
    other_cams = [5, *QUERY_CAMS[1:]]
    result = evaluate_ranking(HAND_DISTANCES, QUERY_PIDS, GALLERY_PIDS, other_cams, GALLERY_CAMS)
    # q0 now ranks (junk g4 out): g0(+) g3 g1(+) g2 g5(+) ...: AP (1 + 2/3 + 3/5) / 3.
    assert result.query_ap[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert result.cmc[0] == pytest.approx(2 / 3)


def test_the_result_is_read_only_and_as_dict_follows_max_rank():
    result = hand_result(max_rank=12)
    assert set(result.as_dict()) == {"rank1", "rank5", "rank10", "mAP", "mINP"}
    assert set(hand_result(max_rank=1).as_dict()) == {"rank1", "mAP", "mINP"}
    assert result.cmc.shape == (12,)
    with pytest.raises(ValueError):
        result.cmc[0] = 0.0
    with pytest.raises(AttributeError):
        result.mAP = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------
# Perfect and reversed rankings
# ---------------------------------------------------------------------------------------------------------

PERFECT_GALLERY_PIDS = np.repeat(np.arange(1, 6), 2)  # 5 identities, 2 images each, all in camera 1
PERFECT_QUERY_PIDS = np.arange(1, 6)  # one query per identity, in camera 0


def perfect_distances() -> np.ndarray:
    same = PERFECT_QUERY_PIDS[:, None] == PERFECT_GALLERY_PIDS[None, :]
    return np.where(same, 0.1, 1.0 + 0.01 * np.arange(10)[None, :])


def test_a_perfect_ranking_scores_one_everywhere():
    result = evaluate_ranking(
        perfect_distances(), PERFECT_QUERY_PIDS, PERFECT_GALLERY_PIDS, np.zeros(5), np.ones(10)
    )
    assert result.as_dict() == {"rank1": 1.0, "rank5": 1.0, "rank10": 1.0, "mAP": 1.0, "mINP": 1.0}


def test_a_reversed_ranking_puts_both_matches_last():
    result = evaluate_ranking(
        -perfect_distances(), PERFECT_QUERY_PIDS, PERFECT_GALLERY_PIDS, np.zeros(5), np.ones(10)
    )
    # 10 items, matches at ranks 9 and 10: AP = (1/9 + 2/10) / 2, INP = 2/10.
    np.testing.assert_array_equal(result.cmc, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    assert result.mAP == pytest.approx((1 / 9 + 2 / 10) / 2, abs=1e-15)
    assert result.mINP == pytest.approx(0.2, abs=1e-15)


# ---------------------------------------------------------------------------------------------------------
# Against a slow reference
# ---------------------------------------------------------------------------------------------------------


def reference_ranking(distances, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Per query: sort the gallery by (distance, index), drop junk, read the metrics off the list."""
    aps, inps, firsts = [], [], []
    for i in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda g: (distances[i][g], g))
        kept = [
            g for g in order if g_pids[g] != -1 and not (g_pids[g] == q_pids[i] and g_cams[g] == q_cams[i])
        ]
        match_ranks = [rank for rank, g in enumerate(kept, start=1) if g_pids[g] == q_pids[i]]
        if not match_ranks:
            continue
        aps.append(sum(j / r for j, r in enumerate(match_ranks, start=1)) / len(match_ranks))
        inps.append(len(match_ranks) / match_ranks[-1])
        firsts.append(match_ranks[0])
    cmc = [sum(first <= k for first in firsts) / len(firsts) for k in range(1, max_rank + 1)]
    return cmc, sum(aps) / len(aps), sum(inps) / len(inps), len(aps)


@pytest.mark.parametrize("decimals", [None, 1], ids=["continuous", "many-ties"])
def test_evaluate_ranking_matches_a_slow_reference_on_random_data(decimals):
    rng = np.random.default_rng(7)
    distances = rng.random((30, 200))
    if decimals is not None:
        distances = np.round(distances, decimals)
    q_pids = rng.integers(1, 12, 30)
    g_pids = rng.integers(-1, 12, 200)  # junk and distractors included
    q_cams = rng.integers(0, 4, 30)
    g_cams = rng.integers(0, 4, 200)

    result = evaluate_ranking(distances, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    cmc, m_ap, m_inp, valid = reference_ranking(
        distances.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist(), 20
    )
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-9)
    assert result.mAP == pytest.approx(m_ap, abs=1e-9)
    assert result.mINP == pytest.approx(m_inp, abs=1e-9)
    assert (result.num_valid_queries, result.num_skipped_queries) == (valid, 30 - valid)


def test_torch_and_float32_distances_give_the_same_result():
    expected = hand_result().as_dict()
    as_tensor = torch.from_numpy(HAND_DISTANCES)
    assert evaluate_ranking(as_tensor, QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS, 5).as_dict() == (
        pytest.approx(expected)
    )
    as_f32 = HAND_DISTANCES.astype(np.float32)
    assert evaluate_ranking(as_f32, QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS, 5).as_dict() == (
        pytest.approx(expected)
    )


# ---------------------------------------------------------------------------------------------------------
# Errors of evaluate_ranking
# ---------------------------------------------------------------------------------------------------------


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no valid query"):
        evaluate_ranking(HAND_DISTANCES[2:3], [3], GALLERY_PIDS, [1], GALLERY_CAMS)


@pytest.mark.parametrize(
    ("argument", "replacement"),
    [
        ("query_pids", [1, 2, 3]),
        ("gallery_pids", [1] * 7),
        ("query_camids", [[0, 1, 1, 2]]),
        ("gallery_camids", [0] * 9),
    ],
)
def test_shape_mismatches_name_the_argument_and_the_shapes(argument, replacement):
    arguments = {
        "query_pids": QUERY_PIDS,
        "gallery_pids": GALLERY_PIDS,
        "query_camids": QUERY_CAMS,
        "gallery_camids": GALLERY_CAMS,
        argument: replacement,
    }
    with pytest.raises(ValueError, match=rf"{argument} has shape .*\(4, 8\)"):
        evaluate_ranking(HAND_DISTANCES, **arguments)


def test_bad_distances_and_max_rank_are_errors():
    labels = (QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS)
    with pytest.raises(ValueError, match=r"distances must be \[Q, G\], got shape \(8,\)"):
        evaluate_ranking(HAND_DISTANCES[0], *labels)
    with_nan = HAND_DISTANCES.copy()
    with_nan[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(with_nan, *labels)
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_ranking(HAND_DISTANCES, *labels, max_rank=0)


# ---------------------------------------------------------------------------------------------------------
# pairwise_distances
# ---------------------------------------------------------------------------------------------------------


def features(seed: int, rows: int, dim: int = 16) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_euclidean_distances_match_a_direct_computation():
    query, gallery = features(0, 7), features(1, 11)
    qn = query / query.norm(dim=1, keepdim=True)
    gn = gallery / gallery.norm(dim=1, keepdim=True)
    direct = ((qn[:, None, :] - gn[None, :, :]) ** 2).sum(dim=-1)
    got = pairwise_distances(query, gallery)
    assert got.shape == (7, 11)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-12)
    cosine = torch.tensor([[1 - float(q @ g) for g in gn] for q in qn], dtype=torch.float64)
    torch.testing.assert_close(pairwise_distances(query, gallery, "cosine"), cosine, rtol=0, atol=1e-12)


def test_distances_ignore_the_feature_scale():
    query, gallery = features(2, 5), features(3, 9)
    for metric in ("euclidean", "cosine"):
        torch.testing.assert_close(
            pairwise_distances(3.7 * query, 0.02 * gallery, metric),
            pairwise_distances(query, gallery, metric),
            rtol=0,
            atol=1e-12,
        )


def test_squared_euclidean_is_twice_the_cosine_distance():
    query, gallery = features(4, 6), features(5, 8)
    torch.testing.assert_close(
        pairwise_distances(query, gallery, "euclidean"),
        2 * pairwise_distances(query, gallery, "cosine"),
        rtol=0,
        atol=1e-12,
    )


def test_chunks_change_nothing_and_self_distances_are_clamped_at_zero():
    query = features(6, 10).float()
    whole = pairwise_distances(query, query)
    # Float32 matrix products of other shapes may round differently in the last bit.
    torch.testing.assert_close(pairwise_distances(query, query, chunk_size=3), whole, rtol=0, atol=1e-6)
    assert whole.dtype == torch.float32
    assert float(whole.min()) >= 0.0
    assert float(whole.diagonal().max()) < 1e-6


def test_pairwise_distances_errors():
    query, gallery = features(7, 3), features(8, 4)
    with pytest.raises(ValueError, match=r"unknown metric 'manhattan'.*'euclidean', 'cosine'"):
        pairwise_distances(query, gallery, "manhattan")
    with pytest.raises(ValueError, match=r"differ in size.*\(3, 16\).*\(4, 8\)"):
        pairwise_distances(query, gallery[:, :8])
    with pytest.raises(ValueError, match=r"query must be \[Q, D\]"):
        pairwise_distances(query[0], gallery)


# ---------------------------------------------------------------------------------------------------------
# k-reciprocal re-ranking
# ---------------------------------------------------------------------------------------------------------


def clustered_split(seed: int, identities: int = 12, noise: float = 1.2):
    """Features around one random centre per identity: 2 queries (cameras 0, 1), 8 gallery images each."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(identities, 32, generator=generator)
    query = centres.repeat_interleave(2, dim=0) + noise * torch.randn(2 * identities, 32, generator=generator)
    gallery = centres.repeat_interleave(8, dim=0) + noise * torch.randn(
        8 * identities, 32, generator=generator
    )
    labels = (
        np.repeat(np.arange(1, identities + 1), 2),
        np.repeat(np.arange(1, identities + 1), 8),
        np.tile([0, 1], identities),
        np.tile(np.arange(8) % 6, identities),
    )
    distances = tuple(
        pairwise_distances(a, b).double().numpy()
        for a, b in ((query, gallery), (query, query), (gallery, gallery))
    )
    return distances, labels


def test_rerank_keeps_the_shape_and_lambda_one_returns_the_original_distances():
    (qg, qq, gg), _ = clustered_split(0)
    reranked = k_reciprocal_rerank(qg, qq, gg, k1=10, k2=4)
    assert reranked.shape == qg.shape == (24, 96)
    np.testing.assert_array_equal(k_reciprocal_rerank(qg, qq, gg, k1=10, k2=4, lambda_value=1.0), qg)
    jaccard_only = k_reciprocal_rerank(qg, qq, gg, k1=10, k2=4, lambda_value=0.0)
    assert jaccard_only.min() >= 0.0
    assert jaccard_only.max() <= 1.0
    np.testing.assert_allclose(reranked, 0.7 * jaccard_only + 0.3 * qg, rtol=0, atol=1e-12)


def test_rerank_raises_map_on_clustered_features():
    (qg, qq, gg), labels = clustered_split(0)
    before = evaluate_ranking(qg, *labels)
    after = evaluate_ranking(k_reciprocal_rerank(qg, qq, gg), *labels)  # the paper's k1=20, k2=6, lambda 0.3
    # Measured with this seed: mAP 0.6959 -> 0.8649, mINP 0.4173 -> 0.6868, rank-1 0.9167 -> 0.9583.
    assert before.mAP == pytest.approx(0.6959, abs=1e-4)
    assert after.mAP == pytest.approx(0.8649, abs=1e-4)
    assert before.mINP == pytest.approx(0.4173, abs=1e-4)
    assert after.mINP == pytest.approx(0.6868, abs=1e-4)
    assert (before.cmc[0], after.cmc[0]) == (pytest.approx(22 / 24), pytest.approx(23 / 24))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rerank_raises_map_for_other_seeds_too(seed):
    (qg, qq, gg), labels = clustered_split(seed)
    before = evaluate_ranking(qg, *labels).mAP
    after = evaluate_ranking(k_reciprocal_rerank(qg, qq, gg, k1=10, k2=4), *labels).mAP
    assert after > before + 0.1  # measured gains: +0.167, +0.149, +0.125


def test_rerank_on_two_far_apart_clusters_gives_the_jaccard_distances_worked_out_by_hand():
    # Points on a line, distance = |x - y|: cluster A = query 0, gallery 1 and 3; cluster B = the same + 100.
    query_x, gallery_x = np.array([0.0, 100.0]), np.array([1.0, 3.0, 101.0, 103.0])
    qg = np.abs(query_x[:, None] - gallery_x[None, :])
    qq = np.abs(query_x[:, None] - query_x[None, :])
    gg = np.abs(gallery_x[:, None] - gallery_x[None, :])
    # k1 = 2: each point's 3 nearest (itself included) are its own cluster, so R*(p) is the cluster, and
    # V_x = exp(-|x - y|) over the cluster's points y = 0, 1, 3. k2 = 1: no query expansion.
    # d_J(0, 1) = 1 - sum min / sum max with V_0 = (1, e^-1, e^-3) and V_1 = (e^-1, 1, e^-2);
    # d_J(0, 3) the same with V_3 = (e^-3, e^-2, 1). Across the clusters nothing is shared: d_J = 1.
    e = np.exp
    near = 1 - (2 * e(-1) + e(-3)) / (2 + e(-2))
    far = 1 - (2 * e(-3) + e(-2)) / (2 + e(-1))
    expected = np.array([[near, far, 1.0, 1.0], [1.0, 1.0, near, far]])
    got = k_reciprocal_rerank(qg, qq, gg, k1=2, k2=1, lambda_value=0.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    mixed = k_reciprocal_rerank(qg, qq, gg, k1=2, k2=1, lambda_value=0.25)
    np.testing.assert_allclose(mixed, 0.75 * expected + 0.25 * qg, rtol=0, atol=1e-12)
    # k2 = 3: every point's vector becomes the mean over its whole cluster, the same for all three.
    expanded = k_reciprocal_rerank(qg, qq, gg, k1=2, k2=3, lambda_value=0.0)
    np.testing.assert_allclose(expanded, [[0, 0, 1, 1], [1, 1, 0, 0]], rtol=0, atol=1e-12)


def test_rerank_with_small_sets_clamps_k1_and_k2():
    (qg, qq, gg), _ = clustered_split(1, identities=2)
    reranked = k_reciprocal_rerank(qg, qq, gg)  # k1 = 20 and k2 = 6 with only 20 images
    assert reranked.shape == (4, 16)
    assert np.isfinite(reranked).all()


def test_rerank_validates_its_inputs():
    (qg, qq, gg), _ = clustered_split(0, identities=2)
    with pytest.raises(ValueError, match=r"query_query has shape \(4, 3\), expected \(4, 4\)"):
        k_reciprocal_rerank(qg, qq[:, :3], gg)
    with pytest.raises(ValueError, match=r"gallery_gallery has shape \(16, 15\), expected \(16, 16\)"):
        k_reciprocal_rerank(qg, qq, gg[:, :15])
    with pytest.raises(ValueError, match=r"query_gallery must be \[Q, G\]"):
        k_reciprocal_rerank(qg[0], qq, gg)
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal_rerank(qg, qq, gg, k1=0)
    with pytest.raises(ValueError, match="k2"):
        k_reciprocal_rerank(qg, qq, gg, k2=0)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(qg, qq, gg, lambda_value=1.5)
