"""The device mesh, the parameter sharding rules, and how a batch is split over the mesh.

- `make_mesh` builds the mesh from the config (`axes=(('data', -1), ('fsdp', 1))`, optional
  'model'); `batch_sharding` splits the leading dimension of a batch over the data axes
  (`BATCH_AXES` present in the mesh, `mesh_batch_axes`), `num_batch_shards` counts the pieces.
- `param_shardings` places parameters by regex rules over their '/'-joined paths, then shards every
  remaining large tensor over 'fsdp' (its largest divisible dimension) and replicates small ones.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Mesh axes that split the batch: those the mesh has, in the mesh's order; absent ones are skipped.
BATCH_AXES = ("data", "fsdp")
_AXIS_TYPES = {"auto": jax.sharding.AxisType.Auto, "explicit": jax.sharding.AxisType.Explicit}


# --------------------------------------------------------------------------------------------------
# Mesh.
# --------------------------------------------------------------------------------------------------


def _get(config: Any, key: str, default: Any = None) -> Any:
  """Reads `key` from a ConfigDict or a mapping (`.get`), or else an attribute, with a default."""
  if hasattr(config, "get"):
    return config.get(key, default)
  return getattr(config, key, default)


def _axis_pairs(axes: Any) -> list[tuple[str, int]]:
  """(name, size) pairs from `(('data', -1), ...)` or a mapping `{'data': -1, ...}`, order kept."""
  items = axes.items() if isinstance(axes, Mapping) or hasattr(axes, "items") else axes
  pairs = [(str(name), int(size)) for name, size in items]
  names = [name for name, _ in pairs]
  if len(set(names)) != len(names):
    raise ValueError(f"mesh axes: repeated axis name in {names}")
  return pairs


def resolve_axis_sizes(axes: Any, num_devices: int) -> list[tuple[str, int]]:
  """Replaces the (at most one) -1 size by the devices left over; checks the product is exact."""
  pairs = _axis_pairs(axes)
  free = [name for name, size in pairs if size == -1]
  if len(free) > 1:
    raise ValueError(f"mesh axes: at most one axis may have size -1, got {free}")
  if any(size == 0 or size < -1 for _, size in pairs):
    raise ValueError(f"mesh axes: sizes must be positive or -1, got {pairs}")
  fixed = math.prod(size for _, size in pairs if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh axes {pairs}: {num_devices} devices are not divisible by {fixed}")
    pairs = [(name, num_devices // fixed if size == -1 else size) for name, size in pairs]
  total = math.prod(size for _, size in pairs)
  if total != num_devices:
    raise ValueError(f"mesh axes {pairs} hold {total} devices, but there are {num_devices}")
  return pairs


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The device mesh described by `mesh_config.axes` over all global devices (every process).

  `mesh_config.axes` is `(('data', -1), ('fsdp', 1))`-like: -1 takes the remaining devices; a
  'model' axis may be added. Optional keys: `axis_types` ('auto', the default, lets the compiler
  place intermediates; 'explicit' turns on sharding-in-types) and `dcn_axes` (per-axis number of
  slices for multi-slice TPU pods, e.g. `(('data', 2),)`: the mesh is then built with the slow
  data-centre network on those axes and the fast interconnect inside each slice).
  """
  devices = list(jax.devices() if devices is None else devices)
  pairs = resolve_axis_sizes(_get(mesh_config, "axes"), len(devices))
  names = tuple(name for name, _ in pairs)
  shape = tuple(size for _, size in pairs)
  kind = str(_get(mesh_config, "axis_types", "auto")).lower()
  if kind not in _AXIS_TYPES:
    raise ValueError(f"mesh axis_types: expected one of {sorted(_AXIS_TYPES)}, got {kind!r}")
  axis_types = (_AXIS_TYPES[kind],) * len(names)

  dcn_axes = _get(mesh_config, "dcn_axes", None)
  if dcn_axes:
    dcn = dict(_axis_pairs(dcn_axes))
    unknown = set(dcn) - set(names)
    if unknown:
      raise ValueError(f"mesh dcn_axes name unknown axes {sorted(unknown)}; mesh axes are {names}")
    dcn_shape = tuple(dcn.get(name, 1) for name in names)
    if any(size % slices for size, slices in zip(shape, dcn_shape, strict=True)):
      raise ValueError(f"mesh dcn_axes {dcn_shape} must divide the axis sizes {shape}")
    ici_shape = tuple(size // slices for size, slices in zip(shape, dcn_shape, strict=True))
    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
    return Mesh(grid, names, axis_types=axis_types)
  return jax.make_mesh(shape, names, axis_types=axis_types, devices=devices)


# --------------------------------------------------------------------------------------------------
# The batch over the mesh.
# --------------------------------------------------------------------------------------------------


def mesh_batch_axes(mesh: Mesh, axis_names: Sequence[str] = BATCH_AXES) -> tuple[str, ...]:
  """The axes of `axis_names` the mesh has, in mesh (major to minor) order: the batch's axes."""
  present = tuple(name for name in mesh.axis_names if name in set(axis_names))
  if not present:
    raise ValueError(f"none of the batch axes {tuple(axis_names)} is in the mesh {mesh.axis_names}")
  return present


def batch_sharding(mesh: Mesh, axis_names: Sequence[str] = BATCH_AXES) -> NamedSharding:
  """Splits the leading (batch) dimension over the data axes and replicates the rest (any rank)."""
  return NamedSharding(mesh, P(mesh_batch_axes(mesh, axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device."""
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh, axis_names: Sequence[str] = BATCH_AXES) -> int:
  """How many pieces the batch is split into: the product of the data axes' sizes."""
  return math.prod(mesh.shape[name] for name in mesh_batch_axes(mesh, axis_names))


# --------------------------------------------------------------------------------------------------
# Parameter sharding.
# --------------------------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
  """One path element as text: dict keys, attribute names and sequence indices."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def tree_paths(tree: Any) -> Any:
  """The same tree with every leaf replaced by its '/'-joined path ('image/stem/conv/kernel')."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return treedef.unflatten(["/".join(_key_name(k) for k in path) for path, _ in leaves])


def _axes_of(entry: Any) -> tuple[str, ...]:
  """The mesh axis names in one PartitionSpec entry (None, a name, or a tuple of names)."""
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _checked_spec(spec: Sequence[Any], shape: tuple[int, ...], mesh: Mesh, path: str) -> P:
  """A rule's spec checked against the tensor (rank, axis names, divisibility), in canonical form.

  Trailing Nones are dropped: P('model') rather than P('model', None).
  """
  spec = tuple(tuple(e) if isinstance(e, list) else e for e in spec)
  if len(spec) > len(shape):
    raise ValueError(f"sharding rule {spec} has more entries than {path} has dimensions {shape}")
  spec = spec + (None,) * (len(shape) - len(spec))
  used = [axis for entry in spec for axis in _axes_of(entry)]
  if len(set(used)) != len(used):
    raise ValueError(f"sharding rule {spec} for {path} uses a mesh axis twice")
  for dim, entry in zip(shape, spec, strict=True):
    for axis in _axes_of(entry):
      if axis not in mesh.shape:
        raise ValueError(
          f"sharding rule {spec} for {path}: no mesh axis {axis!r} in {mesh.axis_names}"
        )
    parts = math.prod(mesh.shape[a] for a in _axes_of(entry))
    if dim % parts:
      raise ValueError(
        f"sharding rule {spec} for {path}{shape}: dimension {dim} is not divisible "
        f"by {parts} devices"
      )
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return P(*spec)


def _fsdp_spec(
  shape: tuple[int, ...], mesh: Mesh, fsdp_axis: str, fsdp_min_size: int, path: str
) -> P:
  """The automatic FSDP rule: large tensors sharded on one dimension, small ones replicated.

  Shards the largest dimension divisible by the fsdp axis size (the first of equal ones) when the
  tensor has at least `fsdp_min_size` elements; replicates it otherwise.
  """
  size = mesh.shape.get(fsdp_axis, 1)
  if size == 1 or math.prod(shape) < fsdp_min_size:
    return P()
  order = sorted(range(len(shape)), key=lambda i: (-shape[i], i))
  for i in order:
    if shape[i] % size == 0:
      return P(*((None,) * i + (fsdp_axis,)))
  logging.info("fsdp: no dimension of %s%s is divisible by %d; replicated", path, shape, size)
  return P()


def param_specs(
  params_or_shapes: Any,
  mesh: Mesh,
  rules: Sequence[tuple[str, Sequence[Any]]] = (),
  *,
  fsdp_axis: str = "fsdp",
  fsdp_min_size: int = 2**18,
) -> Any:
  """A PartitionSpec per parameter (leaves: arrays or anything with `.shape`).

  `rules` are `(regex, spec)` pairs tried in order with `re.search` on the parameter's '/'-joined
  path; the first match wins and its spec (trailing Nones dropped) is final, so a rule
  `('bias$', ())` pins biases replicated and `('attn/.*/kernel', (None, 'model'))` shards a kernel's
  columns over 'model'. Unmatched parameters get the automatic FSDP rule (see `_fsdp_spec`).
  """
  compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]

  def one(path: str, leaf: Any) -> P:
    shape = tuple(leaf.shape)
    for regex, spec in compiled:
      if regex.search(path):
        return _checked_spec(spec, shape, mesh, path)
    return _fsdp_spec(shape, mesh, fsdp_axis, fsdp_min_size, path)

  return jax.tree.map(one, tree_paths(params_or_shapes), params_or_shapes)


def param_shardings(
  params_or_shapes: Any,
  mesh: Mesh,
  rules: Sequence[tuple[str, Sequence[Any]]] = (),
  *,
  fsdp_axis: str = "fsdp",
  fsdp_min_size: int = 2**18,
) -> Any:
  """`param_specs` as NamedShardings on `mesh`: pass as `out_shardings` of a jitted init."""
  specs = param_specs(
    params_or_shapes, mesh, rules, fsdp_axis=fsdp_axis, fsdp_min_size=fsdp_min_size
  )
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P)
  )
