"""The device mesh, parameter sharding rules, and the JoImTeRNet objectives over the global batch.

Three parts:
- `make_mesh` builds the mesh from the config (`axes=(('data', -1), ('fsdp', 1))`, optional
  'model'); `batch_sharding` splits the leading dimension of a batch over the data axes.
- `param_shardings` places parameters by regex rules over their '/'-joined paths, then shards every
  remaining large tensor over 'fsdp' (its largest divisible dimension) and replicates small ones.
- `sharded_itm_loss` evaluates `losses.itm_loss` over a batch of N pairs split over d devices
  (n = N / d each) inside `jax.shard_map`, with explicit collectives. Values and gradients equal the
  single-device computation on the whole batch; the region-word scores go round a ring so that
  memory per device does not grow with d (see `_ring_word_scores`).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jimte import losses

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


def mesh_batch_axes(mesh: Mesh, axis_names: Sequence[str] = BATCH_AXES) -> tuple[str, ...]:
  """The names among `axis_names` that the mesh has, in mesh order: the axes the batch is split
  on."""
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
  """A tree of the same structure whose leaves are their '/'-joined paths
  ('image/stem/conv/kernel')."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return treedef.unflatten(["/".join(_key_name(k) for k in path) for path, _ in leaves])


def _axes_of(entry: Any) -> tuple[str, ...]:
  """The mesh axis names in one PartitionSpec entry (None, a name, or a tuple of names)."""
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _checked_spec(spec: Sequence[Any], shape: tuple[int, ...], mesh: Mesh, path: str) -> P:
  """Checks a rule's spec against the tensor (rank, axis names, divisibility); returns it with
  trailing Nones dropped (the canonical form: P('model') rather than P('model', None))."""
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
  """Shards the largest dimension divisible by the fsdp axis size (the first of equal ones) when the
  tensor has at least `fsdp_min_size` elements; replicates it otherwise."""
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


# --------------------------------------------------------------------------------------------------
# Negatives over a sharded batch.
# --------------------------------------------------------------------------------------------------


def num_batch_shards(mesh: Mesh, axis_names: Sequence[str] = BATCH_AXES) -> int:
  """How many pieces the batch is split into: the product of the data axes' sizes."""
  return math.prod(mesh.shape[name] for name in mesh_batch_axes(mesh, axis_names))


def sample_negatives(rng: jax.Array, global_batch: int, num_shards: int = 1) -> jax.Array:
  """int32 [N]: one negative index per anchor, uniform over the other examples of its shard.

  `num_shards=1` draws over the whole batch (what `local_pairs='global'` uses); with the mesh's
  shard count every negative lies on its anchor's device, as `local_pairs='device'` requires.
  Indices are global (0..N-1) either way.
  """
  if global_batch % num_shards:
    raise ValueError(f"a batch of {global_batch} does not split into {num_shards} shards")
  n = global_batch // num_shards
  keys = jax.random.split(rng, num_shards)
  local = jax.vmap(lambda key: losses.sample_negatives(key, n))(keys)  # [shards, n]
  return (local + n * jnp.arange(num_shards, dtype=jnp.int32)[:, None]).reshape(global_batch)


# --------------------------------------------------------------------------------------------------
# The objectives over the global batch. Everything below runs inside `jax.shard_map`: each device
# holds n = N / d pairs, and `axes` names the mesh axes the batch is split over (their linear index
# is the shard's position in the global batch).
# --------------------------------------------------------------------------------------------------

LOCAL_PAIRS = ("global", "device", "global_gather")
_SENTENCE_CE = ("sentence_ce_i2t", "sentence_ce_t2i")
_SENTENCE_TRIPLET = ("sentence_triplet_i2t", "sentence_triplet_t2i")
_WORD_CE = ("word_ce_i2t", "word_ce_t2i")
_WORD_TRIPLET = ("word_triplet_i2t", "word_triplet_t2i")


def _scores_dtype(*arrays: jax.Array) -> jnp.dtype:
  """Dtype of Z from `losses.region_word_scores`: float32, float64 for float64 inputs."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _shift_from_next(x: jax.Array, *, axes: tuple[str, ...], d: int) -> jax.Array:
  """One ring step: every device receives the block of the next device (i + 1) mod d."""
  return jax.lax.ppermute(x, axes, perm=[(j, (j - 1) % d) for j in range(d)])


def _ring_word_scores(
  regions: jax.Array,
  words: jax.Array,
  word_mask: jax.Array,
  *,
  axes: tuple[str, ...],
  d: int,
  gamma1: float,
  gamma2: float,
  text_block: int | None,
) -> jax.Array:
  """Rows of Z [n, N] for this device's n images against all N texts (global column order).

  A ring of d steps: at step k the device holds the text block of device (i + k) mod d, scores it
  against its own images with `losses.region_word_scores`, and passes the block on with a ppermute.
  The custom VJP keeps only the local inputs as residuals and runs the ring again backwards: each
  step recomputes its block's forward and backward, adds the images' cotangent locally, and sends
  the text block's cotangent along with the block, so that after d steps it is home. Memory per
  device is therefore independent of d (no stored blocks, no gathered texts).

  Every step, the last included, sits in one `fori_loop` and ends with a hop (the last one brings
  the texts home, unused): peeling that step out of the loop would save one transfer but make XLA
  keep the loop body's buffers and the peeled block's side by side (measured: +25% temp memory).
  """
  score = functools.partial(
    losses.region_word_scores, gamma1=gamma1, gamma2=gamma2, text_block=text_block
  )
  n = regions.shape[0]
  dtype = _scores_dtype(regions, words)
  hop = functools.partial(_shift_from_next, axes=axes, d=d)

  @jax.custom_vjp
  def ring(regions, words, word_mask):
    return ring_fwd(regions, words, word_mask)[0]

  def ring_fwd(regions, words, word_mask):
    def step(k, carry):
      block, mask, out = carry
      out = jax.lax.dynamic_update_index_in_dim(out, score(regions, block, mask), k, axis=0)
      return hop(block), hop(mask), out

    out = jax.lax.pcast(jnp.zeros((d, n, n), dtype), axes, to="varying")
    _, _, out = jax.lax.fori_loop(0, d, step, (words, word_mask, out))
    # out[k] holds texts of device (i + k) mod d; global block j sits at ring position (j - i) mod
    # d.
    out = jnp.roll(out, jax.lax.axis_index(axes), axis=0)
    return jnp.moveaxis(out, 0, 1).reshape(n, d * n), (regions, words, word_mask)

  def ring_bwd(residuals, cotangent):
    regions, words, word_mask = residuals
    acc = _scores_dtype(regions, words)  # cotangents accumulate in float32 even under bfloat16
    # Ring order again: position k holds the cotangent of the block of device (i + k) mod d.
    blocks = jnp.moveaxis(cotangent.reshape(n, d, n), 1, 0)
    blocks = jnp.roll(blocks, -jax.lax.axis_index(axes), axis=0)

    def step(k, carry):
      block, mask, d_block, d_regions = carry
      _, vjp = jax.vjp(lambda r, w: score(r, w, mask), regions, block)
      g_regions, g_block = vjp(jax.lax.dynamic_index_in_dim(blocks, k, axis=0, keepdims=False))
      return (
        hop(block),
        hop(mask),
        hop(d_block + g_block.astype(acc)),
        d_regions + g_regions.astype(acc),
      )

    zeros = lambda x: jax.lax.pcast(jnp.zeros(x.shape, acc), axes, to="varying")
    carry = (words, word_mask, zeros(words), zeros(regions))
    _, _, d_words, d_regions = jax.lax.fori_loop(0, d, step, carry)
    return d_regions.astype(regions.dtype), d_words.astype(words.dtype), None

  ring.defvjp(ring_fwd, ring_bwd)
  return ring(regions, words, word_mask)


def _gathered_word_scores(
  regions: jax.Array,
  words: jax.Array,
  word_mask: jax.Array,
  *,
  axes: tuple[str, ...],
  gamma1: float,
  gamma2: float,
  text_block: int | None,
) -> jax.Array:
  """Rows of Z [n, N] from all-gathered texts and one `losses.region_word_scores` call.

  Same values as the ring; fewer, larger collectives, but the gathered texts (and their cotangent)
  take N * T * D per device: memory grows linearly with d. A baseline for small meshes and
  benchmarks.
  """
  all_words = jax.lax.all_gather(words, axes, tiled=True)
  all_mask = jax.lax.all_gather(word_mask, axes, tiled=True)
  return losses.region_word_scores(regions, all_words, all_mask, gamma1, gamma2, text_block)


def _columns(rows: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """Columns of own texts [N, n] from every device's rows [n, N]: one all_to_all of Z's blocks."""
  return jax.lax.all_to_all(rows, axes, split_axis=1, concat_axis=0, tiled=True)


def _take_rows(matrix: jax.Array, cols: jax.Array) -> jax.Array:
  """matrix[r, cols[r]] for every row r; NaN where cols[r] is out of range (see device mode)."""
  valid = (cols >= 0) & (cols < matrix.shape[1])
  picked = jnp.take_along_axis(matrix, jnp.clip(cols, 0, matrix.shape[1] - 1)[:, None], axis=1)[
    :, 0
  ]
  return jnp.where(valid, picked, jnp.nan)


def _take_cols(matrix: jax.Array, rows: jax.Array) -> jax.Array:
  """matrix[rows[c], c] for every column c; NaN where rows[c] is out of range."""
  return _take_rows(matrix.T, rows)


def _level_sums(
  rows: jax.Array,
  cols: jax.Array,
  own: jax.Array,
  *,
  scale: float,
  study: tuple[jax.Array, jax.Array] | None,
  negatives: tuple[jax.Array, jax.Array] | str | None,
  margin: float,
  want_ce: bool,
  want_triplet: bool,
) -> dict[str, jax.Array]:
  """Sums over this device's anchors of the four per-anchor losses of one level (sentence or word).

  rows [n, C]: scores of own images against C candidate texts; cols [C, n]: of C candidate images
  against own texts; own [n]: the candidates' index of each own pair (its diagonal entry).
  study = (study ids of the own pairs [n], of the candidates [C]) to mask other pairs of the same
  study, or None. negatives: (text index per own image [n], image index per own text [n]) in
  candidate indices, or 'hardest' to mine them here (max score, excluding the pair itself and its
  study). Returns sums keyed 'ce_i2t', 'ce_t2i', 'triplet_i2t', 'triplet_t2i' for the terms
  requested.
  """
  n, num_candidates = rows.shape
  candidates = jnp.arange(num_candidates)
  self_rows = candidates[None, :] == own[:, None]  # [n, C]
  self_cols = candidates[:, None] == own[None, :]  # [C, n]
  same_rows = jnp.zeros_like(self_rows)
  same_cols = jnp.zeros_like(self_cols)
  if study is not None:
    same_rows = (study[0][:, None] == study[1][None, :]) & ~self_rows
    same_cols = same_rows.T
  out = {}
  if want_ce:
    log_p_rows = jax.nn.log_softmax(jnp.where(same_rows, -jnp.inf, scale * rows), axis=1)
    log_p_cols = jax.nn.log_softmax(jnp.where(same_cols, -jnp.inf, scale * cols), axis=0)
    out["ce_i2t"] = -jnp.sum(_take_rows(log_p_rows, own))
    out["ce_t2i"] = -jnp.sum(_take_cols(log_p_cols, own))
  if want_triplet:
    if isinstance(negatives, str):
      frozen_rows, frozen_cols = jax.lax.stop_gradient(rows), jax.lax.stop_gradient(cols)
      neg_txt = jnp.argmax(jnp.where(self_rows | same_rows, -jnp.inf, frozen_rows), axis=1)
      neg_img = jnp.argmax(jnp.where(self_cols | same_cols, -jnp.inf, frozen_cols), axis=0)
    else:
      neg_txt, neg_img = negatives
    positive_rows, positive_cols = _take_rows(rows, own), _take_cols(cols, own)
    out["triplet_i2t"] = jnp.sum(jax.nn.relu(_take_rows(rows, neg_txt) - positive_rows + margin))
    out["triplet_t2i"] = jnp.sum(jax.nn.relu(_take_cols(cols, neg_img) - positive_cols + margin))
  return out


def sharded_itm_loss(
  mesh: Mesh,
  *,
  weights: Mapping[str, float] | None = losses.DEFAULT_WEIGHTS,
  gamma1: float = 4.0,
  gamma2: float = 5.0,
  gamma3: float = 10.0,
  sentence_margin: float = 0.5,
  word_margin: float = 0.5,
  local_pairs: str = "global",
  text_block: int | None = None,
  axis_names: Sequence[str] = BATCH_AXES,
) -> Callable[..., tuple[jax.Array, dict]]:
  """`losses.itm_loss` over a global batch split on the mesh's data axes, as one `shard_map`.

  Returns `fn(img_emb [N, D], txt_emb [N, D], regions [N, R, D], words [N, T, D], word_mask [N, T],
  neg_idx, study_ids [N] or None) -> (total, terms)`, callable inside `jit` on globally sharded
  arrays (or outside on any arrays); `total` and `terms` (same names as `losses.itm_loss`, weight-0
  terms left out) are replicated scalars (float32; float64 for float64 inputs), differentiable
  w.r.t. every float input. neg_idx: int [N] global indices shared by all triplet terms, a pair
  (negative text per image [N], negative image per text [N]), or 'hardest' (VSE++, mined at each
  level from its own scores, same study excluded: no N x N matrix is needed outside). Inputs used
  only by weight-0 terms may be None.

  Sentence terms always use the global batch: the other tower's vectors are all-gathered, so each
  device has its images' rows [n, N] and its texts' columns [N, n] of M_s, and the CE over N
  candidates is exact. `local_pairs` chooses the word level:
  - 'global': Z over all N x N pairs, rows by a ring of ppermutes (`_ring_word_scores`; per-device
    memory flat in d), columns by an all_to_all of the rows. Equals `losses.itm_loss` on the whole
    batch, values and gradients.
  - 'device': Z only over the n x n pairs of each device, no communication (as GLoRIA and the
    original do within one GPU). Each word term is then the mean over devices of the single-device
    term on that device's n pairs (CE over n candidates, study ids compared within the device),
    which with equal shards is psum(per-anchor sum) / N. Word-triplet negatives must lie on the
    anchor's device (`sample_negatives(rng, N, num_batch_shards(mesh))`); a negative elsewhere
    yields NaN.
  - 'global_gather': like 'global' but the texts are all-gathered and scored in one call: memory per
    device grows with d. A baseline.
  """
  if local_pairs not in LOCAL_PAIRS:
    raise ValueError(f"local_pairs must be one of {LOCAL_PAIRS}, got {local_pairs!r}")
  weights = losses.resolve_weights(weights)
  active = {name for name, weight in weights.items() if weight != 0.0}
  axes = mesh_batch_axes(mesh, axis_names)
  d = num_batch_shards(mesh, axes)
  want = lambda *names: any(name in active for name in names)
  gamma1, gamma2, gamma3 = float(gamma1), float(gamma2), float(gamma3)

  def per_device(inputs: dict[str, jax.Array], hardest: bool) -> tuple[jax.Array, dict]:
    n = next(iter(inputs.values())).shape[0]
    big_n = n * d
    offset = jax.lax.axis_index(axes) * n
    own_global = offset + jnp.arange(n)
    study = inputs.get("study_ids")
    all_study = None if study is None else jax.lax.all_gather(study, axes, tiled=True)
    if hardest:
      negatives = "hardest"
    elif "neg_txt" in inputs:
      negatives = (inputs["neg_txt"], inputs["neg_img"])
    else:
      negatives = None
    sums = {}

    if want(*_SENTENCE_CE, *_SENTENCE_TRIPLET):
      img, txt = inputs["img_emb"], inputs["txt_emb"]
      rows = losses.cosine_matrix(img, jax.lax.all_gather(txt, axes, tiled=True))  # [n, N]
      cols = losses.cosine_matrix(jax.lax.all_gather(img, axes, tiled=True), txt)  # [N, n]
      level = _level_sums(
        rows,
        cols,
        own_global,
        scale=gamma3,
        study=None if study is None else (study, all_study),
        negatives=negatives,
        margin=sentence_margin,
        want_ce=want(*_SENTENCE_CE),
        want_triplet=want(*_SENTENCE_TRIPLET),
      )
      sums.update({f"sentence_{key}": value for key, value in level.items()})

    if want(*_WORD_CE, *_WORD_TRIPLET):
      regions, words, mask = inputs["regions"], inputs["words"], inputs["word_mask"].astype(bool)
      if local_pairs == "device":
        rows = losses.region_word_scores(regions, words, mask, gamma1, gamma2, text_block)  # [n, n]
        cols, own = rows, jnp.arange(n)
        level_study = None if study is None else (study, study)
        if isinstance(negatives, tuple):  # global indices -> this device's; off-device ones: NaN
          negatives = tuple(idx - offset for idx in negatives)
      else:
        kwargs = dict(axes=axes, gamma1=gamma1, gamma2=gamma2, text_block=text_block)
        if local_pairs == "global":
          rows = _ring_word_scores(regions, words, mask, d=d, **kwargs)  # [n, N]
        else:
          rows = _gathered_word_scores(regions, words, mask, **kwargs)
        cols, own = _columns(rows, axes), own_global
        level_study = None if study is None else (study, all_study)
      level = _level_sums(
        rows,
        cols,
        own,
        scale=gamma3,
        study=level_study,
        negatives=negatives,
        margin=word_margin,
        want_ce=want(*_WORD_CE),
        want_triplet=want(*_WORD_TRIPLET),
      )
      sums.update({f"word_{key}": value for key, value in level.items()})

    names = [name for name in losses.TERM_NAMES if name in active]
    totals = jax.lax.psum(jnp.stack([sums[name] for name in names]), axes) / big_n
    terms = {name: totals[i] for i, name in enumerate(names)}
    total = sum((weights[name] * terms[name] for name in names), jnp.zeros((), jnp.float32))
    return total, terms

  def fn(img_emb, txt_emb, regions, words, word_mask, neg_idx=None, study_ids=None):
    """(total, terms) of the ITM objective over the global batch (see `sharded_itm_loss`)."""
    hardest = isinstance(neg_idx, str)
    if hardest and neg_idx != "hardest":
      raise ValueError(f"neg_idx must be indices, a pair of indices or 'hardest', got {neg_idx!r}")
    inputs = {}
    if want(*_SENTENCE_CE, *_SENTENCE_TRIPLET):
      inputs.update(
        img_emb=_needed("img_emb", img_emb, active), txt_emb=_needed("txt_emb", txt_emb, active)
      )
    if want(*_WORD_CE, *_WORD_TRIPLET):
      inputs.update(
        regions=_needed("regions", regions, active),
        words=_needed("words", words, active),
        word_mask=_needed("word_mask", word_mask, active),
      )
    if want(*_SENTENCE_TRIPLET, *_WORD_TRIPLET) and not hardest:
      neg_txt, neg_img = _split_negatives(_needed("neg_idx", neg_idx, active))
      inputs.update(neg_txt=neg_txt, neg_img=neg_img)
    if study_ids is not None:
      inputs["study_ids"] = jnp.asarray(study_ids)
    if not inputs:
      raise ValueError("every ITM term has weight 0: nothing to compute")
    sizes = {name: x.shape[0] for name, x in inputs.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"inputs disagree on the batch size: {sizes}")
    if next(iter(sizes.values())) % d:
      raise ValueError(
        f"a global batch of {next(iter(sizes.values()))} does not split over {d} "
        f"devices of the mesh axes {axes}"
      )
    specs = {name: P(axes) for name in inputs}
    if jax.sharding.AxisType.Explicit in tuple(mesh.axis_types):  # sharding-in-types: place inputs
      inputs = {
        name: jax.sharding.reshard(x, NamedSharding(mesh, specs[name]))
        for name, x in inputs.items()
      }
    return jax.shard_map(
      functools.partial(per_device, hardest=hardest), mesh=mesh, in_specs=(specs,), out_specs=P()
    )(inputs)

  return fn


def _needed(name: str, value: Any, active: set[str]) -> Any:
  """The input itself, or a ValueError naming the active terms that need it."""
  if value is None:
    raise ValueError(f"{name} is needed by the active terms {sorted(active)}")
  return value


def _split_negatives(neg_idx: Any) -> tuple[jax.Array, jax.Array]:
  """(negative text per image, negative image per text) from one shared [N] array or a pair."""
  if isinstance(neg_idx, (tuple, list)):
    if len(neg_idx) != 2:
      raise ValueError("neg_idx as a pair must be (neg_txt_for_img, neg_img_for_txt)")
    return jnp.asarray(neg_idx[0], jnp.int32), jnp.asarray(neg_idx[1], jnp.int32)
  neg_idx = jnp.asarray(neg_idx, jnp.int32)
  return neg_idx, neg_idx
