"""Host batches (numpy, from data_pipeline.input) -> global jax.Arrays split over the mesh.

Every process passes its own host batch; the global batch is their concatenation in process order,
with the leading dimension split over the mesh's batch axes (`jimte.sharding.batch_sharding`:
'data' and 'fsdp' when present) and replicated over the others (e.g. 'model').
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jimte import sharding


def _check_host_batch(key: str, value: np.ndarray, mesh: Mesh, axes: tuple[str, ...]) -> None:
  """Raises when one entry of a host batch cannot become a global array split over `axes`."""
  if value.dtype == object or value.dtype.kind in "SU":
    raise TypeError(
      f"batch entry {key!r} holds strings ({value.dtype}); only numbers can go to devices"
    )
  if value.ndim == 0:
    raise ValueError(
      f"batch entry {key!r} is a scalar; every entry needs the batch as its leading dim"
    )
  shards = sharding.num_batch_shards(mesh, axes)
  processes = jax.process_count()
  if shards % processes == 0 and value.shape[0] % (shards // processes):
    raise ValueError(
      f"host batch of {key!r} has {value.shape[0]} rows, not divisible by the "
      f"{shards // processes} batch shards of this process "
      f"(mesh axes {axes}: {shards} shards over {processes} processes)"
    )


def to_global_batch(
  host_batch: Mapping[str, np.ndarray],
  mesh: Mesh,
  batch_axes: Sequence[str] = sharding.BATCH_AXES,
) -> dict[str, jax.Array]:
  """Each process's host batch assembled into global arrays (leading dim host rows x processes)."""
  axes = sharding.mesh_batch_axes(mesh, batch_axes)
  batch_sharding = sharding.batch_sharding(mesh, axes)
  global_batch = {}
  for key, value in host_batch.items():
    value = np.asarray(value)
    _check_host_batch(key, value, mesh, axes)
    global_batch[key] = jax.make_array_from_process_local_data(batch_sharding, value)
  return global_batch


def prefetch_to_mesh(
  iterator: Iterable[Mapping[str, np.ndarray]],
  mesh: Mesh,
  size: int = 2,
  batch_axes: Sequence[str] = sharding.BATCH_AXES,
) -> Iterator[dict[str, jax.Array]]:
  """Yields global batches while the next `size` are already being transferred to the devices."""
  if size < 1:
    raise ValueError(f"size must be at least 1, got {size}")
  iterator = iter(iterator)
  queue: collections.deque[dict[str, jax.Array]] = collections.deque()

  def enqueue(count: int) -> None:
    for host_batch in itertools.islice(iterator, count):
      queue.append(to_global_batch(host_batch, mesh, batch_axes))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


# ----------------------------------------------------------------------------- text length buckets

# Batch entries whose second dimension is the token position (docs/contracts.md).
TEXT_KEYS = ("tokens", "mlm_tokens", "mlm_targets", "mlm_weights")


def check_text_buckets(buckets: Sequence[int], max_len: int) -> tuple[int, ...]:
  """`config.text_buckets` validated: increasing positive ints ending at `max_len` (or empty)."""
  buckets = tuple(buckets)
  if not buckets:
    return buckets
  if not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets):
    raise ValueError(f"config.text_buckets: {buckets!r} must be positive ints")
  if list(buckets) != sorted(set(buckets)) or buckets[-1] != max_len:
    raise ValueError(
      f"config.text_buckets: {buckets!r} must increase and end at tokenizer.max_len={max_len}"
    )
  return buckets


def used_length(host_batch: Mapping[str, np.ndarray]) -> int:
  """Positions up to the last non-padding token of any row (0 for an all-padding batch)."""
  tokens = np.asarray(host_batch["tokens"])
  used = np.flatnonzero(tokens.any(axis=0))
  return int(used[-1]) + 1 if used.size else 0


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `length` tokens."""
  for bucket in buckets:
    if length <= bucket:
      return bucket
  raise ValueError(f"a batch uses {length} token positions, more than the largest bucket {buckets}")


def trim_text(
  host_batches: Iterable[Mapping[str, np.ndarray]], buckets: Sequence[int]
) -> Iterator[dict[str, np.ndarray]]:
  """Host batches with their token positions cut to the smallest bucket that holds every row of
  the *global* batch: the text tower then runs on the positions reports use, not on all `max_len`.

  Only padding is cut (key padding is masked, pooling and losses read valid positions only), so
  each step's maths is unchanged; there is one compiled step per bucket. The global length is
  the maximum over processes (an allgather per batch, run by every process for every batch, in
  the same order), so every host cuts its share alike. With text dropout the dropout masks are
  drawn for the cut shape: the same distribution, other draws. `buckets` empty: batches pass as
  they are.
  """
  buckets = tuple(buckets)
  for batch in host_batches:
    if not buckets:
      yield dict(batch)
      continue
    length = used_length(batch)
    if jax.process_count() > 1:
      length = int(np.max(multihost_utils.process_allgather(np.int32(length))))
    keep = bucket_length(length, buckets)
    yield {k: (np.asarray(v)[:, :keep] if k in TEXT_KEYS else v) for k, v in batch.items()}
