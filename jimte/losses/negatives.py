"""Negatives of the triplet terms: uniform draws (whole batch or within shards) and hardest ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jimte.losses.matching import same_study_others

Array = jax.Array
Negatives = Array | tuple[Array, Array]


def _uniform_others(rng: Array, batch_size: int) -> Array:
  """int32 [B]: for each anchor i an index n(i) != i, uniform over the other B - 1."""
  if batch_size < 2:
    raise ValueError(f"negatives need a batch of at least 2, got {batch_size}")
  offsets = jax.random.randint(rng, (batch_size,), 1, batch_size, dtype=jnp.int32)
  return (jnp.arange(batch_size, dtype=jnp.int32) + offsets) % batch_size


def sample_negatives(rng: Array, global_batch: int, num_shards: int = 1) -> Array:
  """int32 [N]: one negative index per anchor, uniform over the other examples of its shard.

  One draw serves all four triplet terms, as in the original. `num_shards=1` draws over the whole
  batch (what `local_pairs='global'` uses); with the mesh's shard count (`num_batch_shards`) every
  negative lies on its anchor's device, as `local_pairs='device'` requires. Indices are global
  (0..N-1) either way.
  """
  if global_batch % num_shards:
    raise ValueError(f"a batch of {global_batch} does not split into {num_shards} shards")
  n = global_batch // num_shards
  keys = jax.random.split(rng, num_shards)
  local = jax.vmap(lambda key: _uniform_others(key, n))(keys)  # [shards, n]
  return (local + n * jnp.arange(num_shards, dtype=jnp.int32)[:, None]).reshape(global_batch)


def mine_hardest(
  scores: Array, targets: Array, excluded: Array | None = None, axis: int = 1
) -> Array:
  """int32 [n]: each anchor's most similar candidate along `axis` other than its own pair (VSE++).

  `excluded` (bool, the layout of `scores`) also skips candidates, e.g. the other pairs of the
  anchor's study. No gradient flows through the choice.
  """
  scores = lax.stop_gradient(scores)
  candidates = jnp.expand_dims(jnp.arange(scores.shape[axis]), 1 - axis)
  own = candidates == jnp.expand_dims(targets, axis)
  skip = own if excluded is None else own | excluded
  return jnp.argmax(jnp.where(skip, -jnp.inf, scores), axis=axis).astype(jnp.int32)


def hardest_negatives(sim_matrix: Array, study_ids: Array | None = None) -> tuple[Array, Array]:
  """VSE++ negatives from a square [B, B] similarity (rows images, columns texts).

  Returns (neg_txt_for_img, neg_img_for_txt), int32 [B] each: the most similar off-diagonal text of
  each image and image of each text, skipping same-study pairs when `study_ids` is given.
  """
  diagonal = jnp.arange(sim_matrix.shape[0])
  excluded = None
  if study_ids is not None:
    study_ids = jnp.asarray(study_ids)
    excluded = same_study_others(study_ids, study_ids, diagonal)
  return (
    mine_hardest(sim_matrix, diagonal, excluded, axis=1),
    mine_hardest(sim_matrix, diagonal, excluded, axis=0),
  )


def split_negatives(neg_idx: Negatives) -> tuple[Array, Array]:
  """(negative text per image, negative image per text), int32, from one [N] array or a pair."""
  if isinstance(neg_idx, (tuple, list)):
    if len(neg_idx) != 2:
      raise ValueError("neg_idx as a pair must be (neg_txt_for_img, neg_img_for_txt)")
    return jnp.asarray(neg_idx[0], jnp.int32), jnp.asarray(neg_idx[1], jnp.int32)
  neg_idx = jnp.asarray(neg_idx, jnp.int32)
  return neg_idx, neg_idx
