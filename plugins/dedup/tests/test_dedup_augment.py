"""The teacher's corrupted training pairs: one edit per value, blanks, swaps, labels and inputs untouched."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from kd_dedup import DEFAULTS
from kd_dedup.augment import Corruption, corruption_from, edit_value
from kd_dedup.data import build_task_data
from kd_dedup.encoding import PAD, decode, encode_records
from kd_dedup.tables import FEBRL_COLUMNS
from kdcore.config import resolve


def codes_of(*values: str, length: int = 12) -> torch.Tensor:
    """Codes ``(len(values), length)`` of one record's values."""
    frame = pd.DataFrame({f"c{i}": [v] for i, v in enumerate(values)})
    return encode_records(frame, list(frame.columns), length)[0]


def one_edit_apart(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with at most one substitution, deletion, insertion or adjacent transposition."""
    if a == b:
        return True
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        swapped = (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
        return len(diff) == 1 or swapped
    short, long = sorted((a, b), key=len)
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def test_an_edit_changes_one_character_keeps_values_left_aligned_and_digits_digits():
    torch.manual_seed(0)
    value = codes_of("hinchcliff")[0]
    number = codes_of("2170")[0]
    changed = 0
    for _ in range(300):
        out = edit_value(value)
        text = decode(out)
        assert one_edit_apart("hinchcliff", text)
        assert (out[len(text) :] == PAD).all()  # padding only after the text
        changed += text != "hinchcliff"
        assert decode(edit_value(number)).isdigit()
    assert changed > 250  # a substitution by the same letter or a transposition of "ff" changes nothing
    assert decode(value) == "hinchcliff"  # the input is never modified


def test_an_edit_of_a_full_width_value_keeps_its_width_and_an_empty_value_stays_empty():
    torch.manual_seed(1)
    full = codes_of("abcdef", length=6)[0]
    for _ in range(100):
        assert edit_value(full).shape == (6,)
    empty = codes_of("")[0]
    assert (edit_value(empty) == PAD).all()


def test_corruption_touches_only_the_second_record_and_never_its_input():
    pair = torch.stack([codes_of("jake", "gillard", "3088"), codes_of("jake", "gillard", "3088")])
    before = pair.clone()
    torch.manual_seed(2)
    corrupt = Corruption(rate=1.0, edit=1.0, blank=0.0, swap=0.0)
    outs = [corrupt(pair) for _ in range(50)]
    assert torch.equal(pair, before)
    assert all(torch.equal(out[0], before[0]) for out in outs)
    assert sum(not torch.equal(out[1], before[1]) for out in outs) >= 45


def test_rate_blank_and_swap_do_what_they_say():
    pair = torch.stack([codes_of("jake", "gillard", "3088")] * 2)
    assert Corruption(rate=0.0)(pair) is pair
    blanked = Corruption(rate=1.0, edit=0.0, blank=1.0, swap=0.0)(pair)
    assert (blanked[1] == PAD).all()
    swapped = Corruption(rate=1.0, edit=0.0, blank=0.0, swap=1.0, swaps=((0, 1),))(pair)
    assert [decode(v) for v in swapped[1]] == ["gillard", "jake", "3088"]
    torch.manual_seed(3)
    half = Corruption(rate=0.5, edit=1.0, blank=0.0, swap=0.0)
    corrupted = sum(not torch.equal(half(pair)[1], pair[1]) for _ in range(400))
    assert 150 < corrupted < 250


def test_the_same_seed_gives_the_same_corruption():
    pair = torch.stack([codes_of("chelsea", "ryan", "woodleigh", "2170")] * 2)
    corrupt = Corruption(rate=0.7, swaps=((0, 1),))
    torch.manual_seed(4)
    first = [corrupt(pair) for _ in range(20)]
    torch.manual_seed(4)
    again = [corrupt(pair) for _ in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_options_build_the_corruption_with_febrls_swaps_by_default():
    options = {"augment": {"rate": 0.5}}
    corruption = corruption_from(options, FEBRL_COLUMNS)
    assert corruption is not None and corruption.rate == 0.5
    assert corruption.swaps == ((0, 1), (3, 4))  # given name and surname, the two address lines
    assert corruption_from({"augment": {"rate": 0.5}}, ("name", "city")).swaps == ()
    named = corruption_from({"augment": {"rate": 1.0, "swaps": [["city", "name"]]}}, ("name", "city"))
    assert named.swaps == ((1, 0),)
    assert corruption_from({"augment": {"rate": 0.0}}, FEBRL_COLUMNS) is None
    assert corruption_from({}, FEBRL_COLUMNS) is None


@pytest.mark.parametrize(
    ("augment", "names"),
    [
        ({"rate": 1.5}, "options.augment.rate"),
        ({"rate": 0.5, "blank": -0.1}, "options.augment.blank"),
        ({"rate": 0.5, "swaps": [["name", "zip"]]}, "options.augment.swaps: ['name', 'zip']"),
        ({"rate": 0.5, "often": 1}, "options.augment has unknown key(s) ['often']"),
    ],
)
def test_bad_augment_options_are_refused_naming_the_key(augment, names):
    with pytest.raises(ValueError, match=re.escape(names)):
        corruption_from({"augment": augment}, ("name", "city"))


def test_only_the_teachers_training_pairs_are_corrupted_and_their_labels_stay():
    task = {"plugin": "dedup", "task": "match"}
    plain = build_task_data(resolve(DEFAULTS, sets=["options.augment.rate=0"], overrides=task))
    assert plain.teacher_data.train.corruption is None and plain.teacher_data.deterministic_train
    data = build_task_data(resolve(DEFAULTS, sets=["options.augment.rate=0.5"], overrides=task))
    teacher = data.teacher_data
    assert teacher.train.corruption is not None and not teacher.deterministic_train
    assert teacher.val.corruption is None and data.train.corruption is None and data.val.corruption is None
    assert data.deterministic_train  # the teacher's cache over the students' pairs still holds
    torch.manual_seed(5)
    items = [teacher.train[i] for i in range(200)]
    same = [
        torch.equal(codes, teacher.train.codes[teacher.train.pairs[i]])
        for i, (codes, _, _) in enumerate(items)
    ]
    assert 40 < sum(same) < 160  # about half the pairs corrupted
    assert all(int(label) == int(teacher.train.labels[i]) for i, (_, label, _) in enumerate(items))
