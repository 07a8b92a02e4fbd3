"""The one table of the eight image-text matching (ITM) terms: names, groupings and default weights.

Every list of term names and every default weight in the repository is read from `TERMS` (the
objective, the trainer's config, the tests): a term is a level (sentence or word), a kind
(cross-entropy or triplet) and a direction (image-to-text or text-to-image). Plain Python, no jax.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Literal, NamedTuple

Level = Literal["sentence", "word"]
Kind = Literal["ce", "triplet"]
Direction = Literal["i2t", "t2i"]


class Term(NamedTuple):
  """One ITM term: `name` is `'{level}_{kind}_{direction}'`."""

  level: Level
  kind: Kind
  direction: Direction
  default_weight: float

  @property
  def name(self) -> str:
    return f"{self.level}_{self.kind}_{self.direction}"


# The original JoImTeRNet weights: 1.0 on the cross-entropy terms, 2.0 on the triplets (losses.md).
_DEFAULT_WEIGHT = {"ce": 1.0, "triplet": 2.0}

# The eight terms, in the order they are reported: CE before triplets, sentence before word.
TERMS: tuple[Term, ...] = tuple(
  Term(level, kind, direction, _DEFAULT_WEIGHT[kind])
  for kind in ("ce", "triplet")
  for level in ("sentence", "word")
  for direction in ("i2t", "t2i")
)

TERM_NAMES: tuple[str, ...] = tuple(term.name for term in TERMS)

DEFAULT_WEIGHTS: Mapping[str, float] = types.MappingProxyType(
  {term.name: term.default_weight for term in TERMS}
)


def term_names(level: Level | None = None, kind: Kind | None = None) -> tuple[str, ...]:
  """Names of the terms of one level and/or kind (None: any), in `TERM_NAMES` order."""
  return tuple(
    term.name
    for term in TERMS
    if (level is None or term.level == level) and (kind is None or term.kind == kind)
  )


SENTENCE_TERMS = term_names(level="sentence")
WORD_TERMS = term_names(level="word")


def resolve_weights(weights: Mapping[str, float] | None = None) -> dict[str, float]:
  """All eight term weights as floats: given values over `DEFAULT_WEIGHTS`; unknown names raise."""
  weights = dict(weights or {})
  unknown = set(weights) - set(TERM_NAMES)
  if unknown:
    raise ValueError(f"unknown ITM terms {sorted(unknown)}; known: {TERM_NAMES}")
  return {name: float(weights.get(name, DEFAULT_WEIGHTS[name])) for name in TERM_NAMES}
