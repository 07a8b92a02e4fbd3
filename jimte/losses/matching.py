"""The per-anchor pieces of the ITM terms: cross-entropy and triplet hinge over a score matrix.

A score matrix has rows = images and columns = texts (losses.md). Each piece reads one anchor per
row (`axis=1`: image anchors against candidate texts) or one per column (`axis=0`: text anchors
against candidate images); `targets` gives each anchor's own pair among the candidates. The
objective sums these per-anchor values over a device's anchors; `ce_from_scores` is the same CE
averaged over a square matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jimte.losses.numerics import stats_dtype

Array = jax.Array


def pick(matrix: Array, index: Array, axis: int = 1) -> Array:
  """`matrix[r, index[r]]` per row (axis=1) or `matrix[index[c], c]` per column (axis=0).

  NaN where the index is out of range, so that a negative the caller cannot see (one on another
  device in `local_pairs='device'`) makes its term loudly NaN instead of silently wrong.
  """
  if axis == 0:
    matrix = matrix.T
  valid = (index >= 0) & (index < matrix.shape[1])
  picked = jnp.take_along_axis(matrix, jnp.clip(index, 0, matrix.shape[1] - 1)[:, None], axis=1)
  return jnp.where(valid, picked[:, 0], jnp.nan)


def same_study_others(study_ids: Array, candidate_study_ids: Array, targets: Array) -> Array:
  """Bool [n, C]: candidate c shares anchor r's study but is not its own pair `targets[r]`."""
  own = jnp.arange(candidate_study_ids.shape[0])[None, :] == targets[:, None]
  return (study_ids[:, None] == candidate_study_ids[None, :]) & ~own


def cross_entropy(
  logits: Array, targets: Array, excluded: Array | None = None, axis: int = 1
) -> Array:
  """Per-anchor CE [n] of the softmax over the candidates along `axis`, at each anchor's target.

  `excluded` (bool, the layout of `logits`) removes candidates first (set to -inf): the other pairs
  of an anchor's study.
  """
  if excluded is not None:
    logits = jnp.where(excluded, -jnp.inf, logits)
  return -pick(jax.nn.log_softmax(logits, axis=axis), targets, axis)


def triplet(scores: Array, targets: Array, negatives: Array, margin: float, axis: int = 1) -> Array:
  """Per-anchor hinge [n]: `relu(score of the negative - score of the own pair + margin)`.

  With cosines as scores this is the sentence triplet of losses.md (d = 1 - cos), with Z the word
  triplet.
  """
  positive = pick(scores, targets, axis)
  return jax.nn.relu(pick(scores, negatives, axis) - positive + margin)


def ce_from_scores(logits: Array, study_ids: Array | None = None) -> tuple[Array, Array]:
  """(i2t, t2i) cross-entropies of a square [B, B] logit matrix (rows images, columns texts).

  i2t averages CE(row a, target a) over rows, t2i CE(column b, target b) over columns. With
  `study_ids` [B], off-diagonal pairs of the same study are set to -inf first.
  """
  if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
    raise ValueError(f"logits must be square [B, B], got {logits.shape}")
  logits = logits.astype(stats_dtype(logits.dtype))
  diagonal = jnp.arange(logits.shape[0])
  excluded = None
  if study_ids is not None:
    study_ids = jnp.asarray(study_ids)
    excluded = same_study_others(study_ids, study_ids, diagonal)
  i2t = jnp.mean(cross_entropy(logits, diagonal, excluded, axis=1))
  t2i = jnp.mean(cross_entropy(logits, diagonal, excluded, axis=0))
  return i2t, t2i
