"""Records as character codes: the fixed alphabet every matcher reads, whatever its data set.

The alphabet is fixed (not learnt from a table) so that a teacher trained on one data set and a student
for another read the same codes: ``0`` pads, ``1`` is any character outside the alphabet (accented
letters, symbols), then space, ``a``-``z``, ``0``-``9`` and common punctuation. Text is expected
lowercased (:func:`kd_dedup.tables.normalise_text`); an upper-case letter would be "unknown".

A table of ``n`` records with ``A`` attribute columns becomes a ``uint8`` tensor ``(n, A, max_length)``:
each value truncated to ``max_length`` characters and padded with ``0``. Encoding is vectorised over a
column (one UTF-32 buffer per column), about a second for 100k records of 10 columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

PAD, UNKNOWN = 0, 1
ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789-'.,/&()#@_+:;!?\"*%"
#: Codes per character: padding, unknown, then the alphabet.
VOCABULARY_SIZE = 2 + len(ALPHABET)

_LOOKUP = np.full(256, UNKNOWN, dtype=np.uint8)
_LOOKUP[0] = PAD
for _code, _char in enumerate(ALPHABET, start=2):
    _LOOKUP[ord(_char)] = _code


def encode_column(values: pd.Series, max_length: int) -> np.ndarray:
    """Character codes ``(len(values), max_length)`` of one column of strings (``""`` is all padding)."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    # Exactly max_length characters per value, then one code point per character (UTF-32).
    text = values.astype(str).str.slice(0, max_length).str.pad(max_length, side="right", fillchar="\0")
    points = np.frombuffer("".join(text.tolist()).encode("utf-32-le"), dtype=np.uint32)
    codes = _LOOKUP[np.minimum(points, 255)]
    codes[points > 255] = UNKNOWN
    return codes.reshape(len(values), max_length)


def encode_records(records: pd.DataFrame, columns: Sequence[str], max_length: int) -> torch.Tensor:
    """Character codes ``(n, len(columns), max_length)`` (``uint8``) of ``records``' attribute columns."""
    missing = [c for c in columns if c not in records.columns]
    if missing:
        raise KeyError(f"records have no column(s) {missing}; they have {list(records.columns)}")
    codes = np.stack([encode_column(records[c], max_length) for c in columns], axis=1)
    return torch.from_numpy(np.ascontiguousarray(codes))


def decode(codes: torch.Tensor) -> str:
    """The text of one attribute's codes (for messages and tests): unknown characters print as ``?``."""
    chars = []
    for code in codes.tolist():
        if code == PAD:
            break
        chars.append("?" if code == UNKNOWN else ALPHABET[code - 2])
    return "".join(chars)
