"""Deterministic patient-level splits: a patient (group) id is hashed onto train/validation/test."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["DEFAULT_SPLIT_FRACTIONS", "assign_split"]

# Default patient-level split: 70 % train, 10 % validation, 20 % test.
DEFAULT_SPLIT_FRACTIONS: tuple[tuple[str, float], ...] = (
  ("train", 0.7),
  ("validation", 0.1),
  ("test", 0.2),
)


def assign_split(
  group_key: str,
  fractions: Sequence[tuple[str, float]] = DEFAULT_SPLIT_FRACTIONS,
  *,
  salt: str = "jimte",
) -> str:
  """Deterministically maps a patient (or patient group) to a split.

  The first 8 bytes of `sha256(salt + "\\0" + group_key)` give a number `u` uniform in
  [0, 1); the split is the first one whose cumulative fraction exceeds `u`. The result does
  not depend on the Python hash seed, the platform, or which other patients exist, so adding
  data never moves a patient to another split.
  """
  total = float(sum(f for _, f in fractions))
  if not fractions or total <= 0 or any(f < 0 for _, f in fractions):
    raise ValueError(f"Invalid split fractions: {fractions!r}")
  digest = hashlib.sha256(f"{salt}\0{group_key}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  cumulative = 0.0
  for name, fraction in fractions:
    cumulative += fraction / total
    if u < cumulative:
      return name
  return fractions[-1][0]
