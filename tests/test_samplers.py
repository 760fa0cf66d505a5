"""kdcore.samplers: a few labelled items over and over, each unlabelled item once an epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore.samplers import FewLabelBatches, labelled_share


def batches(labelled, unlabelled, per_labelled, per_unlabelled, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return FewLabelBatches(
        np.array(labelled), np.array(unlabelled), per_labelled, per_unlabelled, count, generator
    )


def test_every_unlabelled_item_once_an_epoch_and_the_labelled_ones_in_every_batch():
    sampler = batches([0, 1, 2], list(range(10, 33)), 2, 5, FewLabelBatches.batches_for(23, 5))
    epochs = [list(sampler), list(sampler)]
    assert len(sampler) == 5 and all(len(epoch) == 5 for epoch in epochs)
    for epoch in epochs:
        assert all(len([i for i in batch if i < 3]) == 2 for batch in epoch)
        assert sorted(i for batch in epoch for i in batch if i >= 10) == list(range(10, 33))
        assert [len(batch) for batch in epoch] == [7, 7, 7, 7, 5]  # 23 unlabelled, 5 a batch
    assert epochs[0] != epochs[1], "a new order every epoch"
    # 10 labelled draws an epoch from 3 items: whole passes over them, each pass a permutation
    draws = [i for batch in epochs[0] for i in batch if i < 3]
    assert sorted(draws[:3]) == sorted(draws[3:6]) == sorted(draws[6:9]) == [0, 1, 2]


def test_the_run_generator_alone_decides_the_order():
    first = list(batches([0, 1], list(range(5, 20)), 1, 4, 4, seed=7))
    again = list(batches([0, 1], list(range(5, 20)), 1, 4, 4, seed=7))
    other = list(batches([0, 1], list(range(5, 20)), 1, 4, 4, seed=8))
    assert first == again and first != other


def test_without_unlabelled_items_the_batches_hold_labelled_items_only():
    epoch = list(batches([4, 5, 6, 7, 8], [], 4, 6, 3))
    assert [len(batch) for batch in epoch] == [4, 4, 4]
    drawn = [i for batch in epoch for i in batch]
    assert {i: drawn.count(i) for i in range(4, 9)}.keys() == set(drawn)  # labelled items only
    assert all(2 <= drawn.count(i) <= 3 for i in range(4, 9))  # two whole passes, then part of a third


@pytest.mark.parametrize(
    ("labelled", "per_labelled", "per_unlabelled", "count", "message"),
    [
        ([], 1, 1, 1, "at least one labelled item"),
        ([0], 0, 1, 1, "labelled_per_batch >= 1"),
        ([0], 1, -1, 1, "unlabelled_per_batch >= 0"),
        ([0], 1, 1, 0, "batches >= 1"),
    ],
)
def test_bad_settings_are_refused(labelled, per_labelled, per_unlabelled, count, message):
    with pytest.raises(ValueError, match=message):
        batches(labelled, [9], per_labelled, per_unlabelled, count)


def test_batches_for_rounds_up_and_is_at_least_one():
    assert [FewLabelBatches.batches_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [1, 1, 1, 2, 2, 3]


def test_labelled_share_splits_the_batch_and_names_both_keys_when_it_cannot():
    config = {"data": {"batch_size": 32}, "options": {"labelled_per_batch": 8}}
    assert labelled_share(config) == (8, 24)
    for bad in (0, 32, 40):
        config["options"]["labelled_per_batch"] = bad
        with pytest.raises(
            ValueError, match=rf"options.labelled_per_batch .*data.batch_size - 1 \(31\), got {bad}"
        ):
            labelled_share(config)
