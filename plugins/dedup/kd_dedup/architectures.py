"""The named matchers' sizes (the table in :mod:`kd_dedup.model`), apart from the networks: loading the
plugin reads the names without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MatcherSpec:
    """The sizes of one named matcher."""

    char_dim: int
    channels: int
    attribute_dim: int
    compare_dim: int
    hidden: int


ARCHITECTURES: dict[str, MatcherSpec] = {
    "siamese_large": MatcherSpec(char_dim=24, channels=64, attribute_dim=32, compare_dim=16, hidden=64),
    "siamese_small": MatcherSpec(char_dim=12, channels=24, attribute_dim=12, compare_dim=6, hidden=32),
}
