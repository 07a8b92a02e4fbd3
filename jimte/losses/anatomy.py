"""RRA-VL: the location-conditioned contrastive loss of anatomical region embeddings against region
texts, over the global batch (docs/alc_itr.md).

For each of R region slots (the same R regions for every image of the step, `select_regions`),
region embedding v[i, r] of image i is scored against the region texts t[j, r] of the same region
of every case j of the global batch: s = scale * cos(v[i, r], t[j, r]). Positives of (i, r): the
cases j whose region text is identical (the same sentence, e.g. the region's normal sentence:
scoring it as a negative would contradict itself), and with `positives="same_finding"` also the
cases with the same nonzero finding code in that region (supervised contrastive). The loss of a
row is the mean over its positives of -log softmax (SupCon's L_out), in both directions
(image -> texts, text -> images), averaged over the valid (image, slot) rows of both directions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jimte import sharding
from jimte.losses.numerics import cosine_matrix

POSITIVES = ("same_text", "same_finding")
_MASKED = -1e9


def select_regions(rng: jax.Array, codes: jax.Array, slots: int) -> jax.Array:
  """int32 [slots]: distinct regions for this step, drawn with probability proportional to one plus
  the number of images of the (global) batch with a finding there, so abnormal regions come up
  more often than the 29 regions' share of normal ones."""
  num_regions = codes.shape[-1]
  if not 0 < slots <= num_regions:
    raise ValueError(f"slots must be in 1..{num_regions}, got {slots}")
  weight = 1.0 + jnp.sum(codes != 0, axis=0).astype(jnp.float32)
  return jax.random.choice(
    rng, num_regions, (slots,), replace=False, p=weight / jnp.sum(weight)
  ).astype(jnp.int32)


def _positive_mask(own_ids, all_ids, own_codes, all_codes, same_finding: bool) -> jax.Array:
  """[n, N]: positives of each row (same text; or the same nonzero finding code)."""
  mask = own_ids[:, None] == all_ids[None, :]
  if same_finding:
    mask |= (own_codes[:, None] == all_codes[None, :]) & (own_codes[:, None] != 0)
  return mask


def _row_losses(logits, positives, column_valid) -> jax.Array:
  """[n]: mean over each row's positives of -log softmax over the valid columns."""
  logits = jnp.where(column_valid[None, :], logits, _MASKED)  # finite: no NaN in any gradient
  log_p = jax.nn.log_softmax(logits, axis=-1)
  positives = positives & column_valid[None, :]
  count = jnp.sum(positives, axis=-1)
  total = jnp.sum(jnp.where(positives, log_p, 0.0), axis=-1)
  return -total / jnp.maximum(count, 1)


def conditioned_objective(
  mesh: Mesh,
  *,
  scale: float,
  positives: str = "same_text",
  axis_names=sharding.BATCH_AXES,
):
  """The RRA-VL loss as a function of global arrays split over the mesh's batch axes:

  fn(region_emb [N, R, D], text_emb [N, R, D], text_ids [N, R], codes [N, R], valid [N, R])
    -> (loss, {"anatomy_i2t": ..., "anatomy_t2i": ...})

  Values and gradients equal the dense single-device computation (tests, 8 devices).
  """
  if positives not in POSITIVES:
    raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
  axes = sharding.mesh_batch_axes(mesh, axis_names)
  d = sharding.num_batch_shards(mesh, axes)
  same_finding = positives == "same_finding"
  scale = float(scale)

  def per_device(v, t, ids, codes, valid):
    gather = functools.partial(jax.lax.all_gather, axis_name=axes, tiled=True)
    all_v, all_t, all_ids, all_codes, all_valid = (gather(x) for x in (v, t, ids, codes, valid))
    sums = {"i2t": 0.0, "t2i": 0.0}
    for r in range(v.shape[1]):
      pos = _positive_mask(ids[:, r], all_ids[:, r], codes[:, r], all_codes[:, r], same_finding)
      for name, rows, cols in (("i2t", v[:, r], all_t[:, r]), ("t2i", t[:, r], all_v[:, r])):
        losses = _row_losses(scale * cosine_matrix(rows, cols), pos, all_valid[:, r])
        sums[name] = sums[name] + jnp.sum(jnp.where(valid[:, r], losses, 0.0))
    count = jnp.sum(valid.astype(jnp.float32))
    totals = jax.lax.psum(jnp.stack([sums["i2t"], sums["t2i"], count]), axes)
    rows = jnp.maximum(totals[2], 1.0)
    i2t, t2i = totals[0] / rows, totals[1] / rows
    return 0.5 * (i2t + t2i), {"anatomy_i2t": i2t, "anatomy_t2i": t2i}

  def fn(region_emb, text_emb, text_ids, codes, valid):
    """(loss, terms) of the RRA-VL objective over the global batch."""
    inputs = (region_emb, text_emb, text_ids, codes, valid.astype(bool))
    if len({x.shape[:2] for x in inputs}) != 1:
      raise ValueError(f"inputs disagree on [N, R]: {[x.shape for x in inputs]}")
    if inputs[0].shape[0] % d:
      raise ValueError(f"a global batch of {inputs[0].shape[0]} does not split over {d} devices")
    specs = tuple(P(axes) for _ in inputs)
    if jax.sharding.AxisType.Explicit in tuple(mesh.axis_types):
      inputs = tuple(jax.sharding.reshard(x, NamedSharding(mesh, P(axes))) for x in inputs)
    return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P())(*inputs)

  return fn
