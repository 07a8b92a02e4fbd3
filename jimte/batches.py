"""Host batches (numpy, from data_pipeline.input) -> global jax.Arrays sharded over the mesh's batch
axes.

Every process passes its own host batch; the global batch is their concatenation in process order,
with the leading dimension split over all data-like mesh axes ('data' and 'fsdp' when present) and
replicated over the others (e.g. 'model').
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Mesh axes that split the batch, in the order they are tried; absent ones are skipped.
DATA_AXES = ("data", "fsdp")


def batch_axes_of(mesh: Mesh, batch_axes: Sequence[str] = DATA_AXES) -> tuple[str, ...]:
  """The axes of `batch_axes` present in `mesh`, in the mesh's own (major to minor) order."""
  present = tuple(name for name in mesh.axis_names if name in batch_axes)
  if not present:
    raise ValueError(
      f"mesh axes {mesh.axis_names} contain none of the batch axes {tuple(batch_axes)}"
    )
  return present


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str] = DATA_AXES) -> NamedSharding:
  """Sharding of a batch array: leading dim over the batch axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(batch_axes_of(mesh, batch_axes)))


def _check_host_batch(key: str, value: np.ndarray, mesh: Mesh, axes: tuple[str, ...]) -> None:
  if value.dtype == object or value.dtype.kind in "SU":
    raise TypeError(
      f"batch entry {key!r} holds strings ({value.dtype}); only numbers can go to devices"
    )
  if value.ndim == 0:
    raise ValueError(
      f"batch entry {key!r} is a scalar; every entry needs the batch as its leading dim"
    )
  shards = math.prod(mesh.shape[a] for a in axes)
  processes = jax.process_count()
  if shards % processes == 0 and value.shape[0] % (shards // processes):
    raise ValueError(
      f"host batch of {key!r} has {value.shape[0]} rows, not divisible by the "
      f"{shards // processes} batch shards of this process "
      f"(mesh axes {axes}: {shards} shards over {processes} processes)"
    )


def to_global_batch(
  host_batch: Mapping[str, np.ndarray], mesh: Mesh, batch_axes: Sequence[str] = DATA_AXES
) -> dict[str, jax.Array]:
  """Assembles each process's host batch into global arrays of leading dim host_batch x
  process_count."""
  axes = batch_axes_of(mesh, batch_axes)
  sharding = NamedSharding(mesh, PartitionSpec(axes))
  global_batch = {}
  for key, value in host_batch.items():
    value = np.asarray(value)
    _check_host_batch(key, value, mesh, axes)
    global_batch[key] = jax.make_array_from_process_local_data(sharding, value)
  return global_batch


def prefetch_to_mesh(
  iterator: Iterable[Mapping[str, np.ndarray]],
  mesh: Mesh,
  size: int = 2,
  batch_axes: Sequence[str] = DATA_AXES,
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
