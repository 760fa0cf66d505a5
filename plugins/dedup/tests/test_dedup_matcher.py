"""The matcher's input and network: character codes, the Siamese model, scoring pairs over a table."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from kd_dedup.architectures import ARCHITECTURES
from kd_dedup.encoding import ALPHABET, PAD, UNKNOWN, VOCABULARY_SIZE, decode, encode_records
from kd_dedup.model import build_model, encode_table, score_pairs


def test_values_become_fixed_codes_truncated_and_padded():
    frame = pd.DataFrame({"name": ["anna", "", "zoë-smith jr"], "code": ["0800", "12", "x"]})
    codes = encode_records(frame, ["name", "code"], max_length=6)
    assert codes.shape == (3, 2, 6) and codes.dtype == torch.uint8
    assert codes[0, 0].tolist() == [2 + ALPHABET.index(c) for c in "anna"] + [PAD, PAD]
    assert codes[1, 0].tolist() == [PAD] * 6  # empty value: all padding
    assert decode(codes[2, 0]) == "zo?-sm"  # truncated; ë is outside the alphabet
    assert codes[2, 0, 2] == UNKNOWN
    assert decode(codes[0, 1]) == "0800"  # leading zero kept: values are text
    assert int(codes.max()) < VOCABULARY_SIZE


def test_a_missing_column_is_named():
    with pytest.raises(KeyError, match="surname"):
        encode_records(pd.DataFrame({"name": ["a"]}), ["name", "surname"], 4)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_matcher_is_symmetric_and_scores_pairs_over_an_encoded_table(arch):
    torch.manual_seed(0)
    model = build_model(arch, {"attributes": 3}, {}).eval()
    codes = torch.randint(0, VOCABULARY_SIZE, (6, 3, 8), dtype=torch.uint8)
    codes[0, 1] = PAD  # one empty value
    pairs = torch.tensor([[0, 1], [2, 3], [4, 5], [0, 5]])
    with torch.no_grad():
        forward = model(codes[pairs]).softmax(dim=1)[:, 1]
        swapped = model(codes[pairs.flip(1)]).softmax(dim=1)[:, 1]
    assert forward.shape == (4,)
    torch.testing.assert_close(forward, swapped)  # the head does not care which record is first
    over_table = score_pairs(model, encode_table(model, codes, torch.device("cpu"), batch=4), pairs, batch=3)
    torch.testing.assert_close(over_table, forward)
    encoded = model.encode(codes)
    assert encoded.shape == (6, 3, ARCHITECTURES[arch].attribute_dim)
    assert torch.count_nonzero(encoded[0, 1]) == 0  # an empty value encodes as zeros


def test_the_student_is_a_sixth_of_the_teacher():
    sizes = {
        arch: sum(p.numel() for p in build_model(arch, {"attributes": 10}, {}).parameters())
        for arch in ARCHITECTURES
    }
    assert sizes == {"siamese_large": 60_530, "siamese_small": 10_034}


def test_an_unknown_architecture_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="siamese_small"):
        build_model("siamese_huge", {"attributes": 2}, {})
