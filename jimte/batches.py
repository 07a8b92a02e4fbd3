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
