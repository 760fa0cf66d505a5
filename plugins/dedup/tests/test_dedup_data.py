"""The task's data: splits by entity, the few target labels, mixed batches, pair sets and their metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kd_dedup import DEFAULTS
from kd_dedup.blocking import FEBRL_PASSES, pairs_beyond
from kd_dedup.data import (
    UNLABELLED,
    PairSet,
    blocking_passes,
    build_task_data,
    choose_labels,
    mixed_batch_sampler,
    pair_truth,
    shared_value_pairs,
    split_by_entity,
    training_neighbours,
)
from kd_dedup.encoding import encode_records
from kd_dedup.evaluation import blocking_summary, match_metrics
from kd_dedup.tables import RecordTable, load_table
from kdcore.config import resolve
from kdcore.samplers import FewLabelBatches


def small_table(entity, side=None) -> RecordTable:
    n = len(entity)
    records = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "name": [f"name{i % 7}" for i in range(n)]})
    return RecordTable("small", records, ("name",), side=side, entity=np.asarray(entity))


def test_an_entity_never_straddles_the_split():
    febrl3 = load_table("febrl3")
    train, test = split_by_entity(febrl3, 0.5, seed=3)
    assert len(train) + len(test) == len(febrl3)
    assert not set(febrl3.entity[train]) & set(febrl3.entity[test])
    assert len(set(febrl3.entity[test])) == 1000  # half of the 2,000 entities
    again, _ = split_by_entity(febrl3, 0.5, seed=3)
    assert np.array_equal(train, again)


def test_few_labels_are_drawn_half_matches_and_the_rest_are_unlabelled():
    truth = np.array([1] * 30 + [0] * 300)
    labels = choose_labels(truth, 20, 0.5, seed=0)
    assert (labels == 1).sum() == 10 and (labels == 0).sum() == 10
    assert (labels == UNLABELLED).sum() == 310
    assert np.all(labels[labels != UNLABELLED] == truth[labels != UNLABELLED])
    with pytest.raises(ValueError, match=r"options\.labels = 80 asks for 40 matches"):
        choose_labels(truth, 80, 0.5, seed=0)


def test_mixed_batches_hold_labelled_pairs_and_every_unlabelled_pair_once_an_epoch():
    labels = np.full(100, UNLABELLED)
    labels[[3, 50, 70]] = [1, 0, 1]
    sampler = mixed_batch_sampler(labels)
    config = {"data": {"batch_size": 10}, "options": {"labelled_per_batch": 2}}
    batches = list(sampler(torch.Generator().manual_seed(0), config, True))
    assert len(batches) == len(sampler(torch.Generator(), config, True)) == 13  # 97 unlabelled, 8 per batch
    assert all(sum(labels[i] != UNLABELLED for i in batch) == 2 for batch in batches)
    unlabelled = [i for batch in batches for i in batch if labels[i] == UNLABELLED]
    assert sorted(unlabelled) == sorted(set(range(100)) - {3, 50, 70})
    same = list(sampler(torch.Generator().manual_seed(0), config, True))
    assert same == batches  # drawn from the run's generator only
    with pytest.raises(ValueError, match="labelled_per_batch must be between 1 and"):
        sampler(torch.Generator(), {"data": {"batch_size": 4}, "options": {"labelled_per_batch": 4}}, True)
    assert isinstance(sampler(torch.Generator(), config, True), FewLabelBatches)


def test_the_no_kd_baseline_takes_as_many_batches_of_the_labelled_pairs_only():
    labels = np.full(100, UNLABELLED)
    labels[[3, 50, 70]] = [1, 0, 1]
    config = {"data": {"batch_size": 10}, "options": {"labelled_per_batch": 2}}
    batches = list(mixed_batch_sampler(labels)(torch.Generator().manual_seed(0), config, False))
    assert len(batches) == 13  # the distilled student's steps
    assert all(len(batch) == 2 and set(batch) <= {3, 50, 70} for batch in batches)


def test_default_blocking_is_febrl_passes_for_febrl_columns_else_a_sorted_pass():
    options = {"blocking": []}
    assert blocking_passes(options, list(load_table("febrl1").columns)) == FEBRL_PASSES
    assert blocking_passes(options, ["title", "brand", "price"]) == [
        {"method": "sorted", "on": ["title", "brand"], "window": 10}
    ]
    with pytest.raises(ValueError, match="colour"):
        blocking_passes({"blocking": [{"method": "block", "on": ["colour"]}]}, ["title"])


def test_blocking_completeness_counts_the_ground_truth_not_the_few_labels():
    table = small_table([0, 0, 1, 1, 2, 2, 3])  # true pairs (0, 1), (2, 3), (4, 5)
    pairs = np.array([[0, 1], [2, 3], [0, 2], [4, 6]])  # (4, 5) not proposed
    labels = np.array([1, -1, -1, -1])  # a training pool: one pair labelled, the rest unlabelled
    pool = PairSet(table, encode_records(table.records, ["name"], 8), pairs, labels)
    summary = blocking_summary(pool)
    assert summary["pairs_completeness"] == pytest.approx(2 / 3)
    assert summary["candidate_pairs"] == 4 and summary["records"] == 7
    assert summary["reduction_ratio"] == pytest.approx(1 - 4 / 21)


def test_metrics_count_what_blocking_lost_as_misses():
    table = small_table([0, 0, 1, 1, 2, 2, 3])
    pairs = np.array([[0, 1], [2, 3], [0, 2], [4, 6]])  # entity 2's pair (4, 5) was not proposed
    pair_set = PairSet(table, encode_records(table.records, ["name"], 8), pairs, missed_true_pairs=1)
    assert pair_set.labels.tolist() == [1, 1, 0, 0]
    codes, label, position = pair_set[1]
    assert codes.shape == (2, 1, 8) and int(label) == 1 and position == 1
    metrics = match_metrics(pair_set, np.array([0.9, 0.2, 0.7, 0.1]), threshold=0.5)
    # tp 1 (0-1), fp 1 (0-2), fn 1 (2-3) + 1 lost by blocking
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(0.4)
    # the clusters: {0, 1, 2} joined through 0-2 against the truth {0,1}, {2,3}, {4,5}, {6}
    assert metrics["cluster_f1"] == pytest.approx(2 * (1 / 3) * (1 / 3) / (2 / 3))


def test_the_default_task_data_gives_the_teacher_the_source_and_the_students_the_target():
    config = resolve(DEFAULTS, overrides={"plugin": "dedup", "task": "match"})
    data = build_task_data(config)
    teacher = data.teacher_data
    assert teacher is not None and teacher.info == data.info
    assert data.info["columns"][:2] == ["given_name", "surname"] and data.info["attributes"] == 10
    assert (teacher.train.labels != UNLABELLED).all()  # every source pair labelled
    assert int((data.train.labels != UNLABELLED).sum()) == 50
    assert int(data.train.labels.eq(1).sum()) == 25
    assert (data.val.labels != UNLABELLED).all()
    assert data.val.table.linkage and not teacher.train.table.linkage  # febrl4 links, febrl3 deduplicates
    assert len(data.train) > 10_000 and data.val.missed_true_pairs < 10


def test_the_students_also_learn_text_neighbours_that_blocking_missed_unlabelled():
    task = {"plugin": "dedup", "task": "match"}
    data = build_task_data(resolve(DEFAULTS, overrides=task))
    plain = build_task_data(resolve(DEFAULTS, sets=["options.train_knn=0"], overrides=task))
    blocked = len(plain.train)
    assert torch.equal(data.train.pairs[:blocked], plain.train.pairs)  # blocking's pairs come first
    assert torch.equal(data.train.labels[:blocked], plain.train.labels)  # the same 50 labelled pairs
    extra = data.train.pairs[blocked:]
    assert len(extra) > 5_000 and (data.train.labels[blocked:] == UNLABELLED).all()
    codes = {tuple(p) for p in plain.train.pairs.tolist()}
    assert not any(tuple(p) in codes for p in extra.tolist())  # only pairs blocking did not propose
    truth = pair_truth(data.train.table, extra.numpy())
    assert 0 < truth.sum() < 0.2 * len(truth)  # a few matches blocking lost, mostly hard non-matches


def teacher_data(*sets: str):
    """The teacher's pair sets of the default task with ``sets``."""
    return build_task_data(
        resolve(DEFAULTS, sets=list(sets), overrides={"plugin": "dedup", "task": "match"})
    ).teacher_data


def test_the_teacher_also_learns_the_source_text_neighbours_labelled_from_its_ground_truth():
    plain = teacher_data("options.teacher_shared=0", "options.teacher_knn=0")
    data = teacher_data("options.teacher_shared=0", "options.teacher_knn=10")
    blocked = len(plain.train)
    assert torch.equal(data.train.pairs[:blocked], plain.train.pairs)
    extra = data.train.pairs[blocked:]
    assert len(extra) > 5_000
    assert torch.equal(
        data.train.labels[blocked:], torch.from_numpy(pair_truth(data.train.table, extra.numpy()))
    )
    assert 0 < int(data.train.labels[blocked:].sum()) < 0.2 * len(extra)  # mostly hard non-matches
    assert torch.equal(data.val.pairs, plain.val.pairs)  # validation stays blocking's pairs


def test_pairs_beyond_keeps_the_new_pairs_once():
    base = np.array([[0, 1], [1, 2]])
    extra = np.array([[1, 2], [0, 3], [0, 3], [2, 4]])
    assert pairs_beyond(base, extra).tolist() == [[0, 3], [2, 4]]
    assert pairs_beyond(base, np.zeros((0, 2), dtype=np.int64)).shape == (0, 2)


def people(rows: list[list[str]], entity, side=None) -> RecordTable:
    """A table of ``rows`` (id, given name, surname, postcode)."""
    records = pd.DataFrame(rows, columns=["id", "given_name", "surname", "postcode"])
    columns = ("given_name", "surname", "postcode")
    return RecordTable("people", records, columns, side=side, entity=np.asarray(entity))


def test_text_neighbours_find_a_misspelt_duplicate_that_needs_no_shared_key():
    rows = [
        ["a", "katherine", "smithson", "4000"],
        ["b", "kathrine", "smithsen", "9999"],
        ["c", "peter", "brown", "4000"],
        ["d", "alice", "jones", "2000"],
        ["e", "zoe", "wilkinson", "3000"],
    ]
    table = people(rows, [0, 0, 1, 2, 3])
    found = training_neighbours(table, np.zeros((0, 2), dtype=np.int64), 1)
    assert [0, 1] in found.tolist()
    assert training_neighbours(table, np.array([[0, 1]]), 1).tolist().count([0, 1]) == 0
    assert len(training_neighbours(table, np.zeros((0, 2), dtype=np.int64), 0)) == 0


#: Anna and Peter share a given name, Clark and Davis a postcode; Zoe and the empty record share nothing.
SHARING = [
    ["a", "anna", "brown", "4000"],
    ["b", "anna", "clark", "5000"],
    ["c", "peter", "davis", "5000"],
    ["d", "zoe", "evans", ""],
    ["e", "", "", ""],
    ["f", "peter", "fox", "6000"],
]


def test_shared_value_partners_share_a_value_and_come_from_the_seed():
    table = people(SHARING, range(6))
    pairs = shared_value_pairs(table, 4, seed=0)
    values = table.records[list(table.columns)].to_numpy()
    for i, j in pairs.tolist():
        assert i < j and any(a == b != "" for a, b in zip(values[i], values[j], strict=True))
    # the only pairs sharing a value; zoe and the empty record share nothing (an empty value is no value)
    assert set(map(tuple, pairs.tolist())) <= {(0, 1), (1, 2), (2, 5)}
    assert {(0, 1), (2, 5)} <= set(map(tuple, pairs.tolist()))  # anna's and peter's only partners
    assert np.array_equal(shared_value_pairs(table, 4, seed=0), pairs)
    assert shared_value_pairs(table, 0, seed=0).shape == (0, 2)


def test_shared_value_partners_of_a_linkage_cross_the_two_tables_a_first():
    table = people(SHARING, range(6), side=np.array([0, 1, 0, 1, 0, 1]))
    pairs = shared_value_pairs(table, 6, seed=1)
    assert len(pairs) and (table.side[pairs[:, 0]] == 0).all() and (table.side[pairs[:, 1]] == 1).all()
    assert set(map(tuple, pairs.tolist())) <= {(0, 1), (2, 1), (2, 5)}


def test_the_teacher_also_learns_random_records_sharing_a_value_labelled():
    plain = teacher_data("options.teacher_knn=0", "options.teacher_shared=0")
    data = teacher_data("options.teacher_knn=0", "options.teacher_shared=5")
    blocked = len(plain.train)
    assert torch.equal(data.train.pairs[:blocked], plain.train.pairs)
    extra = data.train.pairs[blocked:].numpy()
    assert len(extra) > 5_000
    assert not {tuple(p) for p in plain.train.pairs.tolist()} & {tuple(p) for p in extra.tolist()}
    truth = pair_truth(data.train.table, extra)
    assert torch.equal(data.train.labels[blocked:], torch.from_numpy(truth))
    assert truth.sum() < 0.001 * len(truth)  # on febrl3 blocking holds almost every duplicate they draw
    assert torch.equal(data.val.pairs, plain.val.pairs)


def test_a_target_without_the_sources_columns_is_refused_naming_the_file_and_column(tmp_path):
    path = tmp_path / "people.csv"
    pd.DataFrame({"id": ["1", "2"], "given_name": ["a", "b"], "surname": ["c", "d"]}).to_csv(
        path, index=False
    )
    config = resolve(DEFAULTS, overrides={"plugin": "dedup", "task": "match", "data": {"path": str(path)}})
    with pytest.raises(ValueError, match=r"people\.csv.*street_number"):
        build_task_data(config)
