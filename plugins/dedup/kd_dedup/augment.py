"""Corrupted copies of the teacher's training pairs: typing errors, missing values and swapped fields.

The teacher learns on the source data set and is then applied to a target whose duplicates may carry
more errors than the source's did. :class:`Corruption` adds errors to the second record of a training
pair as it is read (``PairSet(corruption=...)``), each epoch anew, so that the teacher has seen
duplicates as damaged as the target's. The kinds of error are those of FEBRL's own generator and of
entity-matching augmentation (Ditto's span edits, attribute deletion and attribute swaps): a character
substituted, deleted, inserted or transposed; a value blanked; two values that forms mix up (given name
and surname, the two address lines) swapped. The label of the pair does not change: a match stays a
match, a non-match a non-match.

``options.augment`` in the task's configuration sets it (``rate`` 0: off; see :func:`corruption_from`).
Randomness comes from torch's generator, which the engine seeds for each stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kd_dedup.encoding import ALPHABET, PAD

_LETTERS = torch.tensor([2 + ALPHABET.index(c) for c in "abcdefghijklmnopqrstuvwxyz"], dtype=torch.uint8)
_DIGITS = torch.tensor([2 + ALPHABET.index(c) for c in "0123456789"], dtype=torch.uint8)
_DIGIT_CODES = frozenset(_DIGITS.tolist())

#: Values that forms mix up, swapped when both columns are among a table's attributes.
FEBRL_SWAPS: tuple[tuple[str, str], ...] = (("given_name", "surname"), ("address_1", "address_2"))


@dataclass(frozen=True)
class Corruption:
    """Random errors added to the second record of a pair's codes ``(2, A, L)``.

    Args:
        rate: probability that a pair's second record is corrupted at all.
        edit: for a corrupted record, the probability of one character edit in each non-empty value.
        blank: for a corrupted record, the probability that each value is blanked (all padding).
        swap: for a corrupted record, the probability that each pair in ``swaps`` is swapped.
        swaps: attribute positions whose values may swap.
    """

    rate: float
    edit: float = 0.3
    blank: float = 0.05
    swap: float = 0.1
    swaps: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for name in ("rate", "edit", "blank", "swap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"options.augment.{name} must be a probability in [0, 1], got {value}")

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        """A corrupted copy of ``codes`` (``(2, A, L)``, ``uint8``); ``codes`` itself is not changed."""
        if self.rate == 0.0 or torch.rand(()) >= self.rate:
            return codes
        codes = codes.clone()
        record = codes[1]
        for a, b in self.swaps:
            if torch.rand(()) < self.swap:
                record[[a, b]] = record[[b, a]]
        for attribute in range(record.shape[0]):
            if torch.rand(()) < self.blank:
                record[attribute] = PAD
            elif torch.rand(()) < self.edit:
                record[attribute] = edit_value(record[attribute])
        return codes


def edit_value(value: torch.Tensor) -> torch.Tensor:
    """``value`` (codes ``(L,)``, left-aligned, padded with ``PAD``) with one random character
    substituted, deleted, inserted or transposed; an empty value is returned as is."""
    length = int((value != PAD).sum())
    if length == 0:
        return value
    capacity = value.shape[0]
    chars = value[:length].tolist()
    at = int(torch.randint(length, ()))
    kind = int(torch.randint(4, ()))
    if kind == 0:
        chars[at] = _like(chars[at])
    elif kind == 1 and length > 1:
        del chars[at]
    elif kind == 2:
        chars.insert(at, _like(chars[at]))
    elif length > 1:
        at = min(at, length - 2)
        chars[at], chars[at + 1] = chars[at + 1], chars[at]
    out = torch.full_like(value, PAD)
    chars = chars[:capacity]
    out[: len(chars)] = torch.tensor(chars, dtype=value.dtype)
    return out


def _like(code: int) -> int:
    """A random digit in place of a digit, else a random letter."""
    pool = _DIGITS if code in _DIGIT_CODES else _LETTERS
    return int(pool[int(torch.randint(len(pool), ()))])


def corruption_from(options: Mapping[str, Any], columns: Sequence[str]) -> Corruption | None:
    """The :class:`Corruption` that ``options.augment`` asks for, or ``None`` when its rate is 0.

    ``options.augment.swaps`` lists column pairs by name; empty, it is the FEBRL pairs among ``columns``.

    Raises:
        ValueError: naming the key when a value is not a probability or a swap names an unknown column.
    """
    spec = dict(options.get("augment") or {})
    unknown = set(spec) - {"rate", "edit", "blank", "swap", "swaps"}
    if unknown:
        raise ValueError(
            f"options.augment has unknown key(s) {sorted(unknown)}; expected rate, edit, blank, swap, swaps"
        )
    if float(spec.get("rate", 0.0)) == 0.0:
        return None
    named = [tuple(pair) for pair in spec.get("swaps") or ()]
    if not named:
        named = [pair for pair in FEBRL_SWAPS if all(column in columns for column in pair)]
    swaps = []
    for pair in named:
        missing = [column for column in pair if column not in columns]
        if len(pair) != 2 or missing:
            raise ValueError(
                f"options.augment.swaps: {list(pair)} must be two of the attribute columns {list(columns)}"
            )
        swaps.append((columns.index(pair[0]), columns.index(pair[1])))
    return Corruption(
        rate=float(spec["rate"]),
        edit=float(spec.get("edit", Corruption.edit)),
        blank=float(spec.get("blank", Corruption.blank)),
        swap=float(spec.get("swap", Corruption.swap)),
        swaps=tuple(swaps),
    )
