"""Exact top-K search of unit vectors by inner product: batched matmul on the device, chunked over
the stored embeddings (top_k per chunk, then merged), so memory stays bounded by the chunk size.

`sharded_search` runs the same search with the stored rows split over a jax mesh axis (each device
scores its own rows, the per-device top-K lists are gathered and merged): the route for stores that
do not fit one device.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_CHUNK = 65536


class IndexMismatchError(ValueError):
  """The query side and the stored index come from different models (dims or config hash)."""


@dataclasses.dataclass(frozen=True)
class IndexIdentity:
  """What makes two embedding spaces comparable: the model's config hash and the vector size."""

  model_name: str
  config_hash: str
  dim: int


def check_compatible(index: IndexIdentity, query: IndexIdentity, *, index_name: str) -> None:
  """Refuses a search of `query` vectors against an index built by another model, naming it."""
  if index.dim != query.dim:
    raise IndexMismatchError(
      f"index {index_name!r} holds {index.dim}-dim embeddings of model {index.model_name!r}; "
      f"the query model {query.model_name!r} gives {query.dim}-dim ones"
    )
  if index.config_hash != query.config_hash:
    raise IndexMismatchError(
      f"index {index_name!r} was exported by model {index.model_name!r} (config hash "
      f"{index.config_hash}); the query model {query.model_name!r} has config hash "
      f"{query.config_hash}: embeddings of different models are not comparable"
    )


class DeviceIndex:
  """Stored unit vectors [N, D] held on the device as [chunks, chunk_size, D] (the last chunk
  zero-padded and masked), searched in one compiled scan: per chunk a matmul and a top_k, merged
  into a running top-k, so memory beyond the index is [Q, chunk_size]."""

  def __init__(self, stored: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK):
    stored = np.asarray(stored, np.float32)
    if stored.ndim != 2 or not len(stored):
      raise ValueError(f"stored embeddings must be a non-empty [N, D] array, got {stored.shape}")
    self.count, self.dim = stored.shape
    chunk = min(chunk_size, self.count)
    n_chunks = -(-self.count // chunk)
    padded = np.zeros((n_chunks * chunk, self.dim), np.float32)
    padded[: self.count] = stored
    self._chunks = jnp.asarray(padded.reshape(n_chunks, chunk, self.dim))

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k] float32, row indices [Q, k] int64) of the best `k` rows, best first."""
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"queries {queries.shape} must be [Q, {self.dim}]")
    if not 1 <= k <= self.count:
      raise ValueError(
        f"k={k} must be between 1 and the number of stored embeddings ({self.count})"
      )
    scores, ids = _scan_search(self._chunks, jnp.asarray(queries), self.count, k)
    return np.asarray(scores), np.asarray(ids, np.int64)


@functools.partial(jax.jit, static_argnames=("count", "k"))
def _scan_search(chunks: jax.Array, queries: jax.Array, count: int, k: int):
  chunk = chunks.shape[1]
  k_chunk = min(k, chunk)

  def step(best, xs):
    rows, index = xs
    ids = index * chunk + jnp.arange(chunk)
    scores = jnp.where(ids[None, :] < count, queries @ rows.T, -jnp.inf)
    top_scores, top_pos = jax.lax.top_k(scores, k_chunk)
    merged_scores = jnp.concatenate([best[0], top_scores], axis=1)  # earlier (lower) ids first,
    merged_ids = jnp.concatenate([best[1], index * chunk + top_pos], axis=1)  # so ties keep them
    new_scores, pos = jax.lax.top_k(merged_scores, k)
    return (new_scores, jnp.take_along_axis(merged_ids, pos, axis=1)), None

  init = (
    jnp.full((queries.shape[0], k), -jnp.inf, jnp.float32),
    jnp.full((queries.shape[0], k), -1, jnp.int32),
  )
  (scores, ids), _ = jax.lax.scan(step, init, (chunks, jnp.arange(chunks.shape[0])))
  return scores, ids


def _merge(scores_a, ids_a, scores_b, ids_b, k: int):
  """Merges two per-query top lists into one of length k (ties keep the lower id first)."""
  scores = np.concatenate([scores_a, scores_b], axis=1)
  ids = np.concatenate([ids_a, ids_b], axis=1)
  order = np.lexsort((ids, -scores), axis=1)[:, :k]
  return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def search(
  queries: np.ndarray, stored: np.ndarray, k: int, *, chunk_size: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
  """Top-`k` rows of `stored` [N, D] by inner product with each of `queries` [Q, D]: scores
  [Q, k] float32 and row indices [Q, k] int64, best first (one-off `DeviceIndex`)."""
  stored = np.asarray(stored)
  if np.asarray(queries).ndim != 2 or stored.ndim != 2:
    raise ValueError(
      f"queries {np.shape(queries)} and stored {stored.shape} must be [Q, D], [N, D]"
    )
  return DeviceIndex(stored, chunk_size=chunk_size).search(queries, k)


def sharded_search(
  queries: np.ndarray, stored: np.ndarray, k: int, mesh: jax.sharding.Mesh, axis: str
) -> tuple[np.ndarray, np.ndarray]:
  """`search` with the stored rows split over mesh axis `axis`: each device holds N / devices rows,
  scores them against the (replicated) queries and keeps its top-`k`; the devices' lists are then
  merged. Same result as `search` (ids are global row numbers)."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  queries = np.asarray(queries, np.float32)
  stored = np.asarray(stored, np.float32)
  n, dim = stored.shape
  n_dev = mesh.shape[axis]
  per_device = -(-n // n_dev)
  if not 1 <= k <= n:
    raise ValueError(f"k={k} must be between 1 and the number of stored embeddings ({n})")
  kd = min(k, per_device)
  padded = np.zeros((per_device * n_dev, dim), np.float32)
  padded[:n] = stored
  stored_dev = jax.device_put(padded, NamedSharding(mesh, P(axis, None)))
  queries_dev = jax.device_put(queries, NamedSharding(mesh, P()))

  def local(q, rows):
    offset = jax.lax.axis_index(axis) * per_device
    scores = q @ rows.T
    ids = offset + jnp.arange(per_device)
    scores = jnp.where(ids[None, :] < n, scores, -jnp.inf)
    top_scores, top_pos = jax.lax.top_k(scores, kd)
    return top_scores, (offset + top_pos).astype(jnp.int32)

  fn = jax.jit(
    jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(axis, None)), out_specs=(P(None, axis), P(None, axis))
    )
  )
  scores, ids = fn(queries_dev, stored_dev)
  scores, ids = np.asarray(scores), np.asarray(ids, np.int64)
  empty_s = np.full((len(queries), 0), -np.inf, np.float32)
  return _merge(empty_s, np.zeros((len(queries), 0), np.int64), scores, ids, k)
