"""The masked language modelling loss of the text tower's MLM steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jimte.losses.numerics import stats_dtype

Array = jax.Array


def mlm_loss(logits: Array, targets: Array, weights: Array) -> tuple[Array, Array]:
  """(loss, accuracy) of masked-token prediction on the weighted positions.

  logits [B, L, V], targets int [B, L], weights float [B, L] (1.0 at selected positions). loss is
  the weighted mean CE (float32 log-softmax); accuracy the weighted fraction of argmax hits. Both
  are 0 when no position is selected.
  """
  log_probs = jax.nn.log_softmax(logits.astype(stats_dtype(logits.dtype)), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  weights = weights.astype(nll.dtype)
  selected = weights != 0
  total_weight = jnp.sum(weights)
  denominator = jnp.where(total_weight > 0, total_weight, 1.0)
  loss = jnp.sum(jnp.where(selected, nll * weights, 0.0)) / denominator
  hits = (jnp.argmax(logits, axis=-1) == targets).astype(nll.dtype)
  accuracy = jnp.sum(jnp.where(selected, hits * weights, 0.0)) / denominator
  return loss, accuracy
