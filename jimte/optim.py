"""Optimizers: one AdamW per tower with its own gradient clipping, and the learning-rate schedules.

The towers get separate optimizer states because the paper's mixture updates the text tower alone on
MLM steps: an image optimizer fed zero gradients would still decay and move its weights. The
schedule is a function of the *global* step (not of a tower's own update count), written into the
optimizer's injected hyperparameters at every update.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

TOWERS = ("image", "text")


def make_schedule(
  optim: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> Callable[[jax.Array], jax.Array]:
  """Learning rate as a function of the global step: 'constant', 'step' (x factor at an epoch) or
  'warmup_cosine' (linear warmup over warmup_epochs, cosine decay to zero at total_steps)."""
  base = optim.learning_rate
  if optim.schedule == "constant":
    return lambda step: jnp.full((), base, jnp.float32)
  if optim.schedule == "step":
    if optim.decay_epoch < 0:
      return lambda step: jnp.full((), base, jnp.float32)
    boundary = int(round(optim.decay_epoch * steps_per_epoch))
    return optax.piecewise_constant_schedule(base, {boundary: optim.decay_factor})
  if optim.schedule == "warmup_cosine":
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=base,
      warmup_steps=max(warmup, 0),
      decay_steps=max(total_steps, warmup + 1),
      end_value=0.0,
    )
  raise ValueError(
    f"config.optim.schedule: unknown schedule {optim.schedule!r} "
    "(expected constant | step | warmup_cosine)"
  )


def _decay_mask(params):
  """Weight decay on matrices and kernels only: biases, norms' scales and offsets are left alone."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_tower_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """clip_by_global_norm(clip_norm) then AdamW, with the learning rate injected per step."""

  def build(learning_rate):
    return optax.chain(
      optax.clip_by_global_norm(optim.clip_norm),
      optax.adamw(
        learning_rate,
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        # The release's torch AdamW decays every parameter (decay_all, the paper config's).
        mask=None if optim.get("decay_all", False) else _decay_mask,
      ),
    )

  return optax.inject_hyperparams(build)(learning_rate=optim.learning_rate)


def make_optimizers(optim: ml_collections.ConfigDict) -> dict[str, optax.GradientTransformation]:
  return {tower: make_tower_optimizer(optim) for tower in TOWERS}


def apply_tower_update(tx: optax.GradientTransformation, opt_state, params, grads, learning_rate):
  """One optimizer update of one tower at the given learning rate -> (new params, new opt state)."""
  hyper = dict(opt_state.hyperparams)
  hyper["learning_rate"] = jnp.asarray(
    learning_rate, dtype=jnp.asarray(hyper["learning_rate"]).dtype
  )
  opt_state = opt_state._replace(hyperparams=hyper)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
