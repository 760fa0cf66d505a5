"""The task's data: a source data set for the teacher, a target data set with few labels for the student.

What :func:`build_task_data` builds from the run's ``options`` (defaults in :mod:`kd_dedup`):

1. **Tables.** The source (``options.source``, default ``febrl3``) and the target (``--data PATH``, else
   ``options.target``, default ``febrl4``) are read with :func:`kd_dedup.tables.load_table`. Both must
   have the attribute columns the matcher reads (``options.columns``, default: the source's), in that
   order: the matcher compares attribute *k* of one record with attribute *k* of the other, so transfer
   needs the same attributes on both sides.
2. **Splits by entity.** The source is split into 80 % training and 20 % validation entities (the
   teacher's checkpoint selection); the target into a training pool and a test part
   (``options.test_fraction``, default half). An entity's records never straddle two parts.
3. **Candidate pairs.** Blocking (:mod:`kd_dedup.blocking`, ``options.blocking``, default the FEBRL
   passes when the columns are FEBRL's) inside each part. Negatives are the blocked non-matches: pairs
   that share a postcode, a birth date or a name neighbourhood, hard by construction.
   The target training pool also gets each record's ``options.train_knn`` nearest neighbours (default
   10) in a character TF-IDF space (:func:`training_neighbours`): ``kd dedup apply`` proposes neighbours
   too, and a student that never saw such hard non-matches scores some of them as matches. The
   source's training part gets the same: its ``options.teacher_knn`` nearest neighbours (default 10),
   labelled from the source's ground truth, and ``options.teacher_shared`` random partners per record
   (default 10) that share one attribute value with it (:func:`shared_value_pairs`): mostly unrelated
   records with a suburb or a given name in common. A teacher that learns corrupted duplicates (5.)
   and never sees such pairs takes them for matches (BENCHMARKS.md, dedup, sessions 16 and 17).
4. **Labels.** Every source pair is labelled (the teacher has many labels). In the target training pool
   only ``options.labels`` pairs are (default 50): a labeller shown blocking's candidate pairs, labelling
   ``options.label_match_fraction`` matches (default half) and the rest non-matches, drawn with the run
   seed. Every other target pair is unlabelled (label ``-1``): the student learns it from the teacher's
   soft match score; the supervised loss ignores it.
5. **Corrupted source pairs.** With ``options.augment.rate`` above 0 (default 0.2; 0: off) each teacher
   training pair's second record gets more errors as it is read (:mod:`kd_dedup.augment`): a teacher
   that has seen duplicates as damaged as a noisier target's misses fewer of them.
6. **Batches.** Student batches hold ``options.labelled_per_batch`` labelled pairs (drawn again and again:
   there are few) and the rest unlabelled pairs, each unlabelled pair once per epoch. The no-KD baseline
   draws the same batches; only their labelled part teaches it.

Validation of the students is the target's test part, fully labelled: its recall counts the true pairs
that blocking lost as misses, so F1 is that of the whole pipeline. Selecting the best epoch on it would
use test labels, so the reports quote the final epoch's figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kd_dedup import UNLABELLED
from kd_dedup.augment import Corruption, corruption_from
from kd_dedup.blocking import (
    FEBRL_PASSES,
    candidate_pairs,
    canonical_pairs,
    key_groups,
    knn_pairs,
    pairs_beyond,
    text_embedding,
    union_pairs,
    validate_passes,
)
from kd_dedup.encoding import encode_records
from kd_dedup.tables import FEBRL_SETS, RecordTable, load_table
from kdcore import TaskData
from kdcore.samplers import FewLabelBatches, labelled_share


class PairSet(Dataset):
    """Candidate pairs of one table as training or evaluation items.

    Item ``i`` is ``(codes, label, i)``: the character codes ``(2, A, L)`` (``uint8``) of the pair's two
    records, its label (1 match, 0 non-match, -1 unlabelled) and its position, by which the plugin's
    ``kd_soft_targets`` finds the pair's transitive target. The whole table's codes are kept once.

    Args:
        table: the records (with their ground truth for evaluation).
        codes: ``encode_records`` of ``table``.
        pairs: positional candidate pairs ``(m, 2)``.
        labels: ``(m,)`` labels; ``None``: every pair labelled from ``table.entity``.
        missed_true_pairs: true pairs of ``table`` that blocking did not propose (recall counts them).
        corruption: errors added to each item's second record as it is read (the teacher's training
            pairs with ``options.augment``; :mod:`kd_dedup.augment`), or ``None``.
    """

    def __init__(
        self,
        table: RecordTable,
        codes: torch.Tensor,
        pairs: np.ndarray,
        labels: np.ndarray | None = None,
        missed_true_pairs: int = 0,
        corruption: Corruption | None = None,
    ) -> None:
        self.table, self.codes, self.corruption = table, codes, corruption
        self.pairs = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
        truth = pair_truth(table, pairs) if labels is None else np.asarray(labels, dtype=np.int64)
        self.labels = torch.as_tensor(truth, dtype=torch.long)
        self.missed_true_pairs = int(missed_true_pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        codes = self.codes[self.pairs[index]]
        if self.corruption is not None:
            codes = self.corruption(codes)
        return codes, self.labels[index], index


def pair_truth(table: RecordTable, pairs: np.ndarray) -> np.ndarray:
    """1 where the two records of a pair are one entity, else 0 (needs ground truth)."""
    if table.entity is None:
        raise ValueError(
            f"{table.name}: no ground truth (a pairs file or an entity column) to label pairs with"
        )
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return (table.entity[pairs[:, 0]] == table.entity[pairs[:, 1]]).astype(np.int64)


def mixed_batch_sampler(labels: np.ndarray):
    """The ``TaskData.train_batch_sampler`` of a target training set with ``labels`` (-1: unlabelled):
    a distilled stage sees every unlabelled pair once an epoch with the few labelled ones; the no-KD
    baseline, which learns nothing from unlabelled pairs, the labelled ones only, in as many batches."""
    labelled = np.flatnonzero(labels != UNLABELLED)
    unlabelled = np.flatnonzero(labels == UNLABELLED)

    def sampler(generator: torch.Generator, config: Mapping[str, Any], distilled: bool) -> FewLabelBatches:
        per_batch, rest = labelled_share(config)
        batches = FewLabelBatches.batches_for(len(unlabelled), rest)
        taught = unlabelled if distilled else unlabelled[:0]
        return FewLabelBatches(labelled, taught, per_batch, rest, batches, generator)

    return sampler


def split_by_entity(table: RecordTable, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the records of a random ``1 - fraction`` of the entities, and of the rest."""
    if table.entity is None:
        raise ValueError(
            f"{table.name}: no ground truth, so it cannot be split into training and test entities"
        )
    entities = np.unique(table.entity)
    rng = np.random.default_rng(seed)
    held = rng.permutation(entities)[: round(fraction * len(entities))]
    in_held = np.isin(table.entity, held)
    return np.flatnonzero(~in_held), np.flatnonzero(in_held)


def choose_labels(truth: np.ndarray, count: int, match_fraction: float, seed: int) -> np.ndarray:
    """Labels with only ``count`` pairs labelled: ``round(count * match_fraction)`` matches, the rest
    non-matches, drawn with ``seed``; every other pair is :data:`UNLABELLED`."""
    matches, others = np.flatnonzero(truth == 1), np.flatnonzero(truth == 0)
    want_matches = round(count * match_fraction)
    want_others = count - want_matches
    if want_matches > len(matches) or want_others > len(others):
        raise ValueError(
            f"options.labels = {count} asks for {want_matches} matches and {want_others} non-matches, "
            "but the "
            f"target's training pairs hold {len(matches)} and {len(others)}"
        )
    rng = np.random.default_rng(seed)
    labels = np.full(len(truth), UNLABELLED, dtype=np.int64)
    chosen = np.concatenate(
        [rng.choice(matches, want_matches, replace=False), rng.choice(others, want_others, replace=False)]
    )
    labels[chosen] = truth[chosen]
    return labels


def blocking_passes(options: Mapping[str, Any], columns: Sequence[str]) -> list[dict[str, Any]]:
    """``options.blocking``, or the FEBRL passes when the columns allow, else a sorted neighbourhood
    on the first two attribute columns."""
    passes = list(options["blocking"])
    if not passes:
        febrl = all(column in columns for spec in FEBRL_PASSES for column in spec["on"])
        passes = FEBRL_PASSES if febrl else [{"method": "sorted", "on": list(columns[:2]), "window": 10}]
    return validate_passes(passes, columns)


def read_tables(config: Mapping[str, Any]) -> tuple[RecordTable, RecordTable]:
    """The source and target tables of a run, with the same attribute columns."""
    options = config["options"]
    reading = {
        "id_column": options["id_column"],
        "entity_column": options["entity_column"],
        "pairs_file": options["pairs_file"],
    }
    source_spec = options["source"]
    source = load_table(source_spec, columns=tuple(options["columns"]), **_reading_for(source_spec, reading))
    target_spec = config["data"]["path"] or options["target"]
    target = load_table(target_spec, columns=source.columns, **_reading_for(target_spec, reading))
    return source, target


def _reading_for(spec: str, reading: Mapping[str, str]) -> dict[str, str]:
    return {"id_column": reading["id_column"]} if str(spec).lower() in FEBRL_SETS else dict(reading)


def pair_set(
    table: RecordTable,
    passes: list[dict[str, Any]],
    max_length: int,
    corruption: Corruption | None = None,
    neighbours: int = 0,
    shared: int = 0,
    seed: int = 0,
) -> PairSet:
    """A fully labelled :class:`PairSet` of ``table``'s candidate pairs, plus each record's ``neighbours``
    nearest text neighbours (:func:`training_neighbours`) and ``shared`` records sharing a value with it
    (:func:`shared_value_pairs`, drawn with ``seed``), with ``corruption`` if given."""
    pairs = candidate_pairs(table, passes)
    pairs = np.concatenate([pairs, training_neighbours(table, pairs, neighbours)])
    pairs = np.concatenate([pairs, pairs_beyond(pairs, shared_value_pairs(table, shared, seed))])
    missed = 0
    if table.entity is not None:
        missed = len(table.true_pairs()) - int(pair_truth(table, pairs).sum())
    codes = encode_records(table.records, table.columns, max_length)
    return PairSet(table, codes, pairs, missed_true_pairs=missed, corruption=corruption)


def training_neighbours(pool: RecordTable, pairs: np.ndarray, k: int) -> np.ndarray:
    """Each pool record's ``k`` nearest neighbours in :func:`~kd_dedup.blocking.text_embedding` that
    blocking did not propose (``pairs``): unlabelled training pairs, so that the students learn the
    teacher's scores on the hard non-matches ``kd dedup apply``'s neighbour proposals bring."""
    if k <= 0 or len(pool) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    return pairs_beyond(pairs, knn_pairs(text_embedding(pool), min(k, len(pool) - 1), pool.side))


def shared_value_pairs(table: RecordTable, per_record: int, seed: int) -> np.ndarray:
    """Each record paired with ``per_record`` random records that share one attribute value with it.

    For each draw the attribute is chosen at random among those whose (non-empty) value the record shares
    with another record, then the partner among those records. Most such pairs are unrelated records
    with one value in common (a suburb, a street number, a given name): the false matches a bold matcher
    makes among ``kd dedup apply``'s neighbour proposals, and a kind that blocking, keyed on a few rare
    values, seldom shows a teacher. For linkage only pairs across the two tables are kept. Returns the
    format of :meth:`RecordTable.true_pairs`, drawn with ``seed``.
    """
    n, width = len(table), len(table.columns)
    if per_record <= 0 or n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    rng = np.random.default_rng(seed)
    # Per attribute: the records sorted by value, and each record's value group in that order.
    order = np.empty((width, n), dtype=np.int64)
    start, size, rank = (np.empty((n, width), dtype=np.int64) for _ in range(3))
    for a, column in enumerate(table.columns):
        groups = key_groups(table.records, [column])
        order[a] = np.argsort(groups, kind="stable")
        start[:, a] = np.searchsorted(groups[order[a]], groups, side="left")
        size[:, a] = np.searchsorted(groups[order[a]], groups, side="right") - start[:, a]
        size[groups < 0, a] = 0  # an empty value is shared with nobody
        rank[order[a], a] = np.arange(n)
    shared = size >= 2
    records = np.flatnonzero(shared.any(axis=1))
    drawn = []
    for _ in range(per_record):
        attribute = (rng.random((len(records), width)) * shared[records]).argmax(axis=1)
        own = rank[records, attribute] - start[records, attribute]
        other = rng.integers(0, size[records, attribute] - 1)
        other += other >= own  # never the record itself
        partner = order[attribute, start[records, attribute] + other]
        drawn.append(np.stack([records, partner], axis=1))
    drawn = np.concatenate(drawn)
    if table.side is not None:
        drawn = drawn[table.side[drawn[:, 0]] != table.side[drawn[:, 1]]]
    return union_pairs(canonical_pairs(drawn, table))


def matcher_info(columns: Sequence[str], max_length: int) -> dict[str, Any]:
    """What a matcher is built from and what ``kd dedup apply`` reads new tables with (in checkpoints)."""
    return {"attributes": len(columns), "columns": list(columns), "max_length": max_length}


def build_task_data(config: Mapping[str, Any]) -> TaskData:
    """Source pairs for the teacher (``teacher_data``), target pairs with few labels for the students."""
    options, seed = config["options"], int(config["seed"])
    source, target = read_tables(config)
    passes = blocking_passes(options, source.columns)
    max_length = int(options["max_length"])
    source_train, source_val = split_by_entity(source, 0.2, seed)
    target_train, target_test = split_by_entity(target, float(options["test_fraction"]), seed)
    corruption = corruption_from(options, source.columns)
    teacher = TaskData(
        train=pair_set(
            source.subset(source_train),
            passes,
            max_length,
            corruption,
            neighbours=int(options["teacher_knn"]),
            shared=int(options["teacher_shared"]),
            seed=seed,
        ),
        val=pair_set(source.subset(source_val), passes, max_length),
        info=matcher_info(source.columns, max_length),
        deterministic_train=corruption is None,
    )
    pool = target.subset(target_train)
    pool_pairs = candidate_pairs(pool, passes)
    labels = choose_labels(  # the labeller is shown blocking's pairs
        pair_truth(pool, pool_pairs), int(options["labels"]), float(options["label_match_fraction"]), seed
    )
    neighbours = training_neighbours(pool, pool_pairs, int(options["train_knn"]))
    pool_pairs = np.concatenate([pool_pairs, neighbours])
    labels = np.concatenate([labels, np.full(len(neighbours), UNLABELLED, dtype=np.int64)])
    train = PairSet(pool, encode_records(pool.records, pool.columns, max_length), pool_pairs, labels)
    return TaskData(
        train=train,
        val=pair_set(target.subset(target_test), passes, max_length),
        info=matcher_info(target.columns, max_length),
        deterministic_train=True,
        train_batch_sampler=mixed_batch_sampler(labels),
        soft_targets_per_item=True,  # the plugin's kd_soft_targets: the same targets for a pair every time
        teacher_data=teacher,
    )
