"""The masked language modelling loss of the text tower's MLM steps.

The MLM head has one output per token id (tied head) or one per token id but the excluded one
(the original's untied head leaves out `[MASK]`, which no target ever is: V - 1 outputs); with
`excluded_id` set, targets are token ids and are mapped to the head's classes here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jimte.losses.numerics import stats_dtype

Array = jax.Array


def token_ids_to_classes(token_ids: Array, excluded_id: int | None) -> Array:
  """Token ids -> class indices of an MLM head without an output for `excluded_id`.

  Ids above `excluded_id` move down by one; the others stay (None: classes are the ids). The
  excluded id itself has no class: it maps onto the next id's, so it must never be a target.
  """
  token_ids = token_ids.astype(jnp.int32)
  if excluded_id is None:
    return token_ids
  return token_ids - (token_ids > excluded_id).astype(jnp.int32)


def mlm_loss(
  logits: Array, targets: Array, weights: Array, excluded_id: int | None = None
) -> tuple[Array, Array]:
  """(loss, accuracy) of masked-token prediction on the weighted positions.

  logits [B, L, C], targets int token ids [B, L], weights float [B, L] (1.0 at selected
  positions). C is V with `excluded_id=None` (the tied head) and V - 1 with `excluded_id` the id
  the head leaves out (the untied head, the model's `mlm_excluded_id`). loss is the weighted mean
  CE (float32 log-softmax); accuracy the weighted fraction of argmax hits. Both are 0 when no
  position is selected.
  """
  classes = token_ids_to_classes(targets, excluded_id)
  log_probs = jax.nn.log_softmax(logits.astype(stats_dtype(logits.dtype)), axis=-1)
  nll = -jnp.take_along_axis(log_probs, classes[..., None], axis=-1)[..., 0]
  weights = weights.astype(nll.dtype)
  selected = weights != 0
  total_weight = jnp.sum(weights)
  denominator = jnp.where(total_weight > 0, total_weight, 1.0)
  loss = jnp.sum(jnp.where(selected, nll * weights, 0.0)) / denominator
  hits = (jnp.argmax(logits, axis=-1) == classes).astype(nll.dtype)
  accuracy = jnp.sum(jnp.where(selected, hits * weights, 0.0)) / denominator
  return loss, accuracy
