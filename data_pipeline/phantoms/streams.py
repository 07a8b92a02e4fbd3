"""Random streams of the phantom: an independent numpy Generator per example and purpose.

Everything about example `i` is drawn from Generators seeded with `[seed, split_code(split), i,
stream]`, so examples are independent of each other and of the order they are generated in, and
each purpose (anatomy, pose, findings, report, noise) can change without moving the others.
`pick` draws one of a few options from such a Generator.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

# The purpose of each stream: the last word of its seed.
STREAMS = {"anatomy": 0, "pose": 1, "findings": 2, "report": 3, "noise": 4, "pairing": 5}


def split_code(split: str) -> int:
  """Stable integer for a split name (CRC32), so seeds differ between splits."""
  return zlib.crc32(split.encode("utf-8"))


def stream_rng(seed: int, split: str, key: int, stream: str, *extra: int) -> np.random.Generator:
  """Independent Generator for one stream of one example (or pair of examples)."""
  if seed < 0 or key < 0:
    raise ValueError(f"seed and index must be non-negative, got seed={seed} index={key}")
  return np.random.default_rng([seed, split_code(split), key, STREAMS[stream], *extra])


def pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
  """One element of `options` (optionally weighted)."""
  if weights is None:
    return options[int(rng.integers(len(options)))]
  p = np.asarray(weights, dtype=np.float64)
  return options[int(rng.choice(len(options), p=p / p.sum()))]
