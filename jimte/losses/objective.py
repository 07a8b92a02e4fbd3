"""L_ITM over the global batch: the one image-text matching objective, the one that trains.

`itm_objective(mesh, ...)` returns the objective of losses.md as a function of a batch of N pairs
split over the d devices of the mesh's data axes (n = N / d each); it runs inside `jax.shard_map`
with explicit collectives. Values and gradients equal the dense single-device computation on the
whole batch (on a 1-device mesh it is that computation), and the region-word scores go round a ring
so that memory per device does not grow with d (see `_ring_word_scores`).

The helpers below run inside `jax.shard_map`: each device holds n = N / d pairs, and `axes` names
the mesh axes the batch is split over (their linear index is the shard's position in the global
batch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jimte import sharding
from jimte.losses.matching import cross_entropy, pick, same_study_others, triplet
from jimte.losses.negatives import mine_hardest, split_negatives
from jimte.losses.numerics import cosine_matrix, stats_dtype
from jimte.losses.region_word import pair_region_word_scores, region_word_scores
from jimte.losses.table import DEFAULT_WEIGHTS, TERM_NAMES, resolve_weights, term_names

# How the word level pairs images with texts (see `itm_objective`).
LOCAL_PAIRS = ("global", "device", "global_gather")
# Whose word count scores an image against its negative text in the word triplet (i2t): the
# negative's own ("own", losses.md) or the anchor's ("anchor", the original release's code).
WORD_TRIPLET_LENGTHS = ("own", "anchor")


# --------------------------------------------------------------------------------------------------
# Word scores Z over the global batch.
# --------------------------------------------------------------------------------------------------


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
  against its own images with `region_word_scores`, and passes the block on with a ppermute.
  The custom VJP keeps only the local inputs as residuals and runs the ring again backwards: each
  step recomputes its block's forward and backward, adds the images' cotangent locally, and sends
  the text block's cotangent along with the block, so that after d steps it is home. Memory per
  device is therefore independent of d (no stored blocks, no gathered texts).

  Every step, the last included, sits in one `fori_loop` and ends with a hop (the last one brings
  the texts home, unused): peeling that step out of the loop would save one transfer but make XLA
  keep the loop body's buffers and the peeled block's side by side (measured: +25% temp memory).
  """
  score = functools.partial(region_word_scores, gamma1=gamma1, gamma2=gamma2, text_block=text_block)
  n = regions.shape[0]
  dtype = stats_dtype(regions.dtype, words.dtype)
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
    acc = stats_dtype(
      regions.dtype, words.dtype
    )  # cotangents accumulate in float32 even under bfloat16
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
  """Rows of Z [n, N] from all-gathered texts and one `region_word_scores` call.

  Same values as the ring; fewer, larger collectives, but the gathered texts (and their cotangent)
  take N * T * D per device: memory grows linearly with d. A baseline for small meshes and
  benchmarks.
  """
  all_words = jax.lax.all_gather(words, axes, tiled=True)
  all_mask = jax.lax.all_gather(word_mask, axes, tiled=True)
  return region_word_scores(regions, all_words, all_mask, gamma1, gamma2, text_block)


def _columns(rows: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """Columns of own texts [N, n] from every device's rows [n, N]: one all_to_all of Z's blocks."""
  return jax.lax.all_to_all(rows, axes, split_axis=1, concat_axis=0, tiled=True)


def _ring_fetch(x: jax.Array, index: jax.Array, *, axes: tuple[str, ...], d: int) -> jax.Array:
  """Rows `index` [m] (global batch indices) of the globally sharded `x` [n, ...], wherever they
  live: `x`'s blocks go once round the ring and each device keeps the rows it asked for.

  Memory per device stays that of one block (no gathered batch); plain autodiff sends each row's
  cotangent back round the ring to its owner.
  """
  n = x.shape[0]
  owner, row = index // n, index % n
  me = jax.lax.axis_index(axes)
  expand = lambda hit: hit.reshape(hit.shape + (1,) * (x.ndim - 1))

  def step(k, carry):
    block, out = carry
    out = jnp.where(expand(owner == (me + k) % d), jnp.take(block, row, axis=0), out)
    return _shift_from_next(block, axes=axes, d=d), out

  out = jax.lax.pcast(jnp.zeros(index.shape + x.shape[1:], x.dtype), axes, to="varying")
  return jax.lax.fori_loop(0, d, step, (x, out))[1]


def _anchor_length_scores(
  regions: jax.Array,
  negative_words: jax.Array,
  word_mask: jax.Array,
  valid: jax.Array,
  *,
  gamma1: float,
  gamma2: float,
) -> jax.Array:
  """Z of each own image against its negative text's words under the image's own pair's word mask
  (the original's quirk: the anchor's word count, whatever the negative's length); NaN where not
  `valid` (`local_pairs='device'` with an off-device negative)."""
  scores = pair_region_word_scores(regions, negative_words, word_mask, gamma1, gamma2)
  return jnp.where(valid, scores, jnp.nan)


# --------------------------------------------------------------------------------------------------
# The terms of one level, and the objective.
# --------------------------------------------------------------------------------------------------


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
  negative_text_scores: Callable[[jax.Array], jax.Array] | None = None,
) -> dict[str, jax.Array]:
  """Sums over this device's anchors of the four per-anchor losses of one level (sentence or word).

  rows [n, C]: scores of own images against C candidate texts; cols [C, n]: of C candidate images
  against own texts; own [n]: the candidates' index of each own pair (its diagonal entry).
  study = (study ids of the own pairs [n], of the candidates [C]) to mask other pairs of the same
  study, or None. negatives: (text index per own image [n], image index per own text [n]) in
  candidate indices, or 'hardest' to mine them here (max score, excluding the pair itself and its
  study). `negative_text_scores(neg_txt) -> [n]`, when given, scores each own image against its
  negative text in the i2t triplet instead of `rows` (the word triplet's anchor-length quirk).
  Returns sums keyed 'ce_i2t', 'ce_t2i', 'triplet_i2t', 'triplet_t2i' for the terms requested.
  """
  excluded_rows = None if study is None else same_study_others(study[0], study[1], own)  # [n, C]
  excluded_cols = None if excluded_rows is None else excluded_rows.T  # [C, n]
  out = {}
  if want_ce:
    out["ce_i2t"] = jnp.sum(cross_entropy(scale * rows, own, excluded_rows, axis=1))
    out["ce_t2i"] = jnp.sum(cross_entropy(scale * cols, own, excluded_cols, axis=0))
  if want_triplet:
    if isinstance(negatives, str):
      neg_txt = mine_hardest(rows, own, excluded_rows, axis=1)
      neg_img = mine_hardest(cols, own, excluded_cols, axis=0)
    else:
      neg_txt, neg_img = negatives
    if negative_text_scores is None:
      out["triplet_i2t"] = jnp.sum(triplet(rows, own, neg_txt, margin, axis=1))
    else:
      positive = pick(rows, own, axis=1)
      out["triplet_i2t"] = jnp.sum(jax.nn.relu(negative_text_scores(neg_txt) - positive + margin))
    out["triplet_t2i"] = jnp.sum(triplet(cols, own, neg_img, margin, axis=0))
  return out


def itm_objective(
  mesh: Mesh,
  *,
  weights: Mapping[str, float] | None = DEFAULT_WEIGHTS,
  gamma1: float = 4.0,
  gamma2: float = 5.0,
  gamma3: float = 10.0,
  sentence_margin: float = 0.5,
  word_margin: float = 0.5,
  local_pairs: str = "global",
  text_block: int | None = None,
  word_triplet_length: str = "own",
  axis_names: Sequence[str] = sharding.BATCH_AXES,
) -> Callable[..., tuple[jax.Array, dict]]:
  """L_ITM of losses.md over a global batch split on the mesh's data axes, as one `shard_map`.

  Returns `fn(img_emb [N, D], txt_emb [N, D], regions [N, R, D], words [N, T, D], word_mask [N, T],
  neg_idx, study_ids [N] or None) -> (total, terms)`, callable inside `jit` on globally sharded
  arrays (or outside on any arrays). `total` is the sum of weight * term; `terms` maps the names of
  `TERM_NAMES` whose weight is not 0 to their unweighted values (weight-0 terms are neither computed
  nor listed). Both are replicated scalars (float32; float64 for float64 inputs), differentiable
  w.r.t. every float input. `weights` (Python floats) override `DEFAULT_WEIGHTS` by name. neg_idx:
  int [N] global indices shared by all triplet terms (`sample_negatives`), a pair (negative text per
  image [N], negative image per text [N]), or 'hardest' (VSE++, mined at each level from its own
  scores, same study excluded: no N x N matrix is needed outside). Inputs used only by weight-0
  terms may be None. `study_ids` masks the other pairs of a study out of every CE and every mining
  of hardest negatives.

  Sentence terms always use the global batch: the other tower's vectors are all-gathered, so each
  device has its images' rows [n, N] and its texts' columns [N, n] of M_s, and the CE over N
  candidates is exact. `local_pairs` chooses the word level:
  - 'global': Z over all N x N pairs, rows by a ring of ppermutes (`_ring_word_scores`; per-device
    memory flat in d), columns by an all_to_all of the rows. Equals the single-device computation
    on the whole batch, values and gradients.
  - 'device': Z only over the n x n pairs of each device, no communication (as GLoRIA and the
    original do within one GPU). Each word term is then the mean over devices of the single-device
    term on that device's n pairs (CE over n candidates, study ids compared within the device),
    which with equal shards is psum(per-anchor sum) / N. Word-triplet negatives must lie on the
    anchor's device (`sample_negatives(rng, N, num_batch_shards(mesh))`); a negative elsewhere
    yields NaN.
  - 'global_gather': like 'global' but the texts are all-gathered and scored in one call: memory per
    device grows with d. A baseline.

  `word_triplet_length` chooses whose words count when the word triplet (i2t) scores image i
  against its negative text n(i): 'own' (losses.md) uses the negative's own word mask, i.e.
  Z(i, n(i)); 'anchor' reproduces the original release, which reads the first n_i words of text
  n(i) (n_i: text i's word count; padding positions included when text n(i) is shorter). The
  negative's words come round the ring (`_ring_fetch`; from the device itself in 'device' mode).
  The t2i triplet scores text i with its own words either way.
  """
  if local_pairs not in LOCAL_PAIRS:
    raise ValueError(f"local_pairs must be one of {LOCAL_PAIRS}, got {local_pairs!r}")
  if word_triplet_length not in WORD_TRIPLET_LENGTHS:
    raise ValueError(
      f"word_triplet_length must be one of {WORD_TRIPLET_LENGTHS}, got {word_triplet_length!r}"
    )
  weights = resolve_weights(weights)
  active = {name for name, weight in weights.items() if weight != 0.0}
  axes = sharding.mesh_batch_axes(mesh, axis_names)
  d = sharding.num_batch_shards(mesh, axes)
  want = lambda level, kind=None: any(name in active for name in term_names(level, kind))
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

    if want("sentence"):
      img, txt = inputs["img_emb"], inputs["txt_emb"]
      rows = cosine_matrix(img, jax.lax.all_gather(txt, axes, tiled=True))  # [n, N]
      cols = cosine_matrix(jax.lax.all_gather(img, axes, tiled=True), txt)  # [N, n]
      level = _level_sums(
        rows,
        cols,
        own_global,
        scale=gamma3,
        study=None if study is None else (study, all_study),
        negatives=negatives,
        margin=sentence_margin,
        want_ce=want("sentence", "ce"),
        want_triplet=want("sentence", "triplet"),
      )
      sums.update({f"sentence_{key}": value for key, value in level.items()})

    if want("word"):
      regions, words, mask = inputs["regions"], inputs["words"], inputs["word_mask"].astype(bool)
      if local_pairs == "device":
        rows = region_word_scores(regions, words, mask, gamma1, gamma2, text_block)  # [n, n]
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
      negative_text_scores = None
      if word_triplet_length == "anchor" and want("word", "triplet"):
        if local_pairs == "device":  # negatives are this device's indices (off-device: NaN)
          fetch = lambda idx: jnp.take(words, jnp.clip(idx, 0, n - 1), axis=0)
          valid = lambda idx: (idx >= 0) & (idx < n)
        else:
          fetch = lambda idx: _ring_fetch(words, idx, axes=axes, d=d)
          valid = lambda idx: jnp.ones(idx.shape, bool)
        negative_text_scores = lambda idx: _anchor_length_scores(
          regions, fetch(idx), mask, valid(idx), gamma1=gamma1, gamma2=gamma2
        )
      level = _level_sums(
        rows,
        cols,
        own,
        scale=gamma3,
        study=level_study,
        negatives=negatives,
        margin=word_margin,
        want_ce=want("word", "ce"),
        want_triplet=want("word", "triplet"),
        negative_text_scores=negative_text_scores,
      )
      sums.update({f"word_{key}": value for key, value in level.items()})

    names = [name for name in TERM_NAMES if name in active]
    totals = jax.lax.psum(jnp.stack([sums[name] for name in names]), axes) / big_n
    terms = {name: totals[i] for i, name in enumerate(names)}
    total = sum((weights[name] * terms[name] for name in names), jnp.zeros((), jnp.float32))
    return total, terms

  def fn(img_emb, txt_emb, regions, words, word_mask, neg_idx=None, study_ids=None):
    """(total, terms) of the ITM objective over the global batch (see `itm_objective`)."""
    hardest = isinstance(neg_idx, str)
    if hardest and neg_idx != "hardest":
      raise ValueError(f"neg_idx must be indices, a pair of indices or 'hardest', got {neg_idx!r}")
    inputs = {}
    if want("sentence"):
      inputs.update(
        img_emb=_needed("img_emb", img_emb, active), txt_emb=_needed("txt_emb", txt_emb, active)
      )
    if want("word"):
      inputs.update(
        regions=_needed("regions", regions, active),
        words=_needed("words", words, active),
        word_mask=_needed("word_mask", word_mask, active),
      )
    if (want("sentence", "triplet") or want("word", "triplet")) and not hardest:
      neg_txt, neg_img = split_negatives(_needed("neg_idx", neg_idx, active))
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
    total, terms = jax.shard_map(
      functools.partial(per_device, hardest=hardest), mesh=mesh, in_specs=(specs,), out_specs=P()
    )(inputs)
    return total, {name: terms[name] for name in TERM_NAMES if name in terms}  # pytrees sort keys

  return fn


def _needed(name: str, value: Any, active: set[str]) -> Any:
  """The input itself, or a ValueError naming the active terms that need it."""
  if value is None:
    raise ValueError(f"{name} is needed by the active terms {sorted(active)}")
  return value
