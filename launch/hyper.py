"""Sweep primitives: a sweep is a list of points, each a dict of config overrides.

Sweep files (`configs/sweeps/*.py`) build theirs in `get_hyper(h)` from these, in the style of
Google's JAX codebases: `h.product([h.sweep("optim.learning_rate", [1e-4, 3e-4]), ...])`.
Keys are dotted config paths (a leading `config.` is allowed and dropped); `h.label` names points
so that their work dirs read as words rather than key lists.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Point = dict[str, Any]
LABEL_KEY = "_label"  # a point's name (not a config override)


def _key(key: str) -> str:
  if not key or not isinstance(key, str):
    raise ValueError(f"a sweep key must be a dotted config path, got {key!r}")
  return key[len("config.") :] if key.startswith("config.") else key


def _merge(points: Iterable[Point]) -> Point:
  merged: Point = {}
  for point in points:
    for key, value in point.items():
      if key == LABEL_KEY and key in merged:
        merged[key] = f"{merged[key]}-{value}"
        continue
      if key in merged:
        raise ValueError(
          f"sweep key {key!r} is set twice in one point ({merged[key]!r}, {value!r})"
        )
      merged[key] = value
  return merged


def fixed(key: str | Mapping[str, Any], value: Any = None) -> list[Point]:
  """One point: `fixed("seed", 1)` or several keys at once, `fixed({"a.b": 1, "c": 2})`."""
  if isinstance(key, Mapping):
    return [{_key(k): v for k, v in key.items()}]
  return [{_key(key): value}]


def sweep(key: str, values: Sequence[Any]) -> list[Point]:
  """One point per value of `key`."""
  if isinstance(values, str | bytes) or not len(values):
    raise ValueError(f"sweep({key!r}, ...) needs a non-empty sequence of values, got {values!r}")
  return [{_key(key): value} for value in values]


def product(parts: Sequence[list[Point]]) -> list[Point]:
  """Every combination of one point from each part (the first part varies slowest)."""
  return [_merge(combo) for combo in itertools.product(*parts)]


def zipit(parts: Sequence[list[Point]]) -> list[Point]:
  """Point i of every part merged, for parts of equal length."""
  lengths = {len(part) for part in parts}
  if len(lengths) > 1:
    raise ValueError(f"zipit needs parts of equal length, got lengths {[len(p) for p in parts]}")
  return [_merge(combo) for combo in zip(*parts, strict=True)]


def chainit(parts: Sequence[list[Point]]) -> list[Point]:
  """The points of every part, one part after the other."""
  return [dict(point) for part in parts for point in part]


def label(name: str, part: list[Point]) -> list[Point]:
  """The points of `part`, named `name` (the name of their work dirs and table rows)."""
  return [{**point, LABEL_KEY: name} for point in part]


def overrides_of(point: Point) -> Point:
  """The config overrides of a point (its label dropped)."""
  return {k: v for k, v in point.items() if k != LABEL_KEY}
