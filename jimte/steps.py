"""The train state and the update steps: an image-text matching (ITM) step on both towers, a masked
language modelling (MLM) step on the text tower, and `TrainSteps`, which runs the step of each kind.

Every step is a pure function of (train state, batch); the state holds params, batch statistics,
per-tower optimizer states, the update count, the ITM step count and the RNG, so a resumed run
continues exactly where an uninterrupted one would. Which kind update u is (`step_kinds`) is a pure
function of (seed, u, mixture), the same on every process; the learning rate follows the ITM steps
(an epoch is a pass of ITM steps over the pairs, as in the original). `TrainSteps` compiles each
kind once, ahead of time, so XLA's cost analysis gives its FLOPs (`jimte.perf.compiled_flops`),
counts the FLOPs executed, and tracks on the device the first step whose loss or health norms were
not finite, read only when the trainer asks (no host sync per step).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jimte import losses, optim, perf, sharding

log = logging.getLogger("jimte.steps")


# ----------------------------------------------------------------------------------------------
# Train state: created directly with its shardings (jit(init, out_shardings=...)).
# ----------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a checkpoint holds exactly this."""

  step: jax.Array  # int32 scalar: number of updates done (ITM and MLM)
  itm_step: jax.Array  # int32 scalar: ITM updates done (the MLM stream is at step - itm_step)
  params: Any  # {'image': ..., 'text': ...}
  batch_stats: Any  # BatchNorm running statistics of the image tower
  opt_state: Any  # {'image': optax state, 'text': optax state}
  rng: jax.Array  # uint32 key data; step keys are fold_in(rng, step)


def init_train_state(config, model, optimizers, mesh, rng) -> tuple[TrainState, Any]:
  """Creates the train state already sharded over the mesh; returns (state, state_shardings)."""
  image = jnp.zeros((1, config.image_size, config.image_size, 1), jnp.float32)
  tokens = jnp.zeros((1, config.tokenizer.max_len), jnp.int32)

  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    variables = model.init(
      {"params": params_rng, "dropout": params_rng}, image, tokens, train=False
    )
    params = variables["params"]
    opt_state = {tower: optimizers[tower].init(params[tower]) for tower in optim.TOWERS}
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      itm_step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=opt_state,
      rng=jax.random.key_data(state_rng),
    )

  abstract = jax.eval_shape(init, rng)
  shardings = sharding.param_shardings(
    abstract, mesh, tuple(config.mesh.rules), fsdp_min_size=config.mesh.fsdp_min_size
  )
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


# ----------------------------------------------------------------------------------------------
# Steps: an image-text matching step on both towers, an MLM step on the text tower alone.
# ----------------------------------------------------------------------------------------------
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _uniform_draws(seed: int, first: int, count: int) -> np.ndarray:
  """float64 [count] in [0, 1): a SplitMix64 hash of (seed, update), updates first..first+count-1.

  Integer arithmetic only, so every process and platform draws the same numbers.
  """
  with np.errstate(over="ignore"):
    x = np.uint64(seed & 0xFFFFFFFF) * _MIX + np.arange(first, first + count, dtype=np.uint64)
    x = (x + _MIX) * _MIX  # decorrelate the seed from the update
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def step_kinds(seed: int, first: int, count: int, loss_config: ml_collections.ConfigDict):
  """Bool [count]: whether updates first..first+count-1 are ITM steps (else MLM).

  The original's mixture: each update is an ITM step with probability `itm_probability`, else an
  MLM step, drawn independently; here the draw is a function of (seed, update), so resume is exact
  and every process runs the same compiled step (the same collectives) at every update.
  """
  if not loss_config.mixture:
    return np.ones(count, bool)
  p = float(loss_config.itm_probability)
  if not 0.0 < p <= 1.0:
    raise ValueError(f"config.loss.itm_probability must be in (0, 1], got {p}")
  return _uniform_draws(seed, first, count) < p


def step_kind(seed: int, step: int, loss_config: ml_collections.ConfigDict) -> str:
  """'itm' or 'mlm' for update `step` (see `step_kinds`)."""
  return "itm" if step_kinds(seed, step, 1, loss_config)[0] else "mlm"


def updates_for_itm_steps(
  seed: int, first: int, itm_steps: int, loss_config: ml_collections.ConfigDict
) -> int:
  """How many updates from update `first` on complete `itm_steps` ITM steps (the last one ITM)."""
  if itm_steps <= 0:
    return 0
  done, updates, chunk = 0, 0, max(1024, 4 * itm_steps)
  while True:
    kinds = step_kinds(seed, first + updates, chunk, loss_config)
    counts = np.cumsum(kinds)
    if done + counts[-1] >= itm_steps:
      return updates + int(np.searchsorted(counts, itm_steps - done)) + 1
    done, updates = done + int(counts[-1]), updates + chunk


def _tree_norm(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return (
    jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
    if leaves
    else jnp.zeros(())
  )


def make_objective(config, mesh) -> Callable:
  """The L_ITM objective over the global batch (shard_map with explicit collectives)."""
  lc = config.loss
  return losses.itm_objective(
    mesh,
    weights=dict(lc.weights),
    gamma1=lc.gamma1,
    gamma2=lc.gamma2,
    gamma3=lc.gamma3,
    sentence_margin=lc.sentence_margin,
    word_margin=lc.word_margin,
    local_pairs=lc.local_pairs,
    text_block=(lc.text_block or None),
    word_triplet_length=lc.word_triplet_length,
  )


def uses_anatomy(config) -> bool:
  """Whether the ITM step adds the RRA-VL objective (ALC-ITR stage 2)."""
  alc = config.get("alc")
  return alc is not None and float(alc.weight) != 0.0


def make_anatomy_objective(config, mesh) -> Callable:
  """The RRA-VL loss over the global batch (jimte/losses/anatomy.py)."""
  alc = config.alc
  return losses.conditioned_objective(mesh, scale=alc.scale, positives=alc.positives)


def _anatomy_loss(model, variables, out, batch, rng, objective, slots: int):
  """(loss, terms) of RRA-VL: `slots` regions drawn for the step, their embeddings against the
  cases' region texts of the same regions (the text tower run on them, dropout on)."""
  select_rng, dropout_rng = jax.random.split(rng)
  n = batch["image"].shape[0]
  chosen = losses.select_regions(select_rng, batch["region_codes"], slots)
  tokens = jnp.take(batch["region_tokens"], chosen, axis=1)  # [n, R, Lr]
  text = model.apply(
    variables,
    tokens.reshape(n * slots, tokens.shape[-1]),
    train=True,
    method=model.encode_text,
    rngs={"dropout": dropout_rng},
  )
  valid = jnp.broadcast_to(batch["valid"][:, None], (n, slots)) if "valid" in batch else None
  if valid is None:
    valid = jnp.ones((n, slots), bool)
  return objective(
    jnp.take(out.anatomy, chosen, axis=1),
    text.sentence.reshape(n, slots, -1),
    jnp.take(batch["region_text_ids"], chosen, axis=1),
    jnp.take(batch["region_codes"], chosen, axis=1),
    valid,
  )


def make_itm_step(config, model, optimizers, schedule, objective, mesh):
  lc = config.loss
  anatomy_objective = make_anatomy_objective(config, mesh) if uses_anatomy(config) else None

  def itm_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    neg_rng, dropout_rng = jax.random.split(rng)
    n = batch["image"].shape[0]
    study_ids = batch["study_index"] if lc.mask_same_study else None

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      out, new_vars = model.apply(
        variables,
        batch["image"],
        batch["tokens"],
        train=True,
        boxes=batch["region_boxes"] if anatomy_objective is not None else None,
        mutable=["batch_stats"],
        rngs={"dropout": dropout_rng},
      )
      regions = out.regions.reshape(n, -1, out.regions.shape[-1])
      if lc.negatives == "hardest":
        neg_idx = "hardest"  # VSE++: mined per level from the scores, same study excluded
      elif lc.negatives == "random":
        shards = sharding.num_batch_shards(mesh) if lc.local_pairs == "device" else 1
        neg_idx = losses.sample_negatives(neg_rng, n, shards)
      else:
        raise ValueError(
          f"config.loss.negatives: unknown {lc.negatives!r} (expected random | hardest)"
        )
      total, terms = objective(
        out.image_global, out.sentence, regions, out.words, out.word_mask, neg_idx, study_ids
      )
      if anatomy_objective is not None:
        anatomy_rng = jax.random.fold_in(dropout_rng, 1)
        alc_loss, alc_terms = _anatomy_loss(
          model, variables, out, batch, anatomy_rng, anatomy_objective, int(config.alc.slots)
        )
        terms = {**terms, "anatomy": alc_loss, **alc_terms}
        total = total + config.alc.weight * alc_loss
      return total, (terms, new_vars["batch_stats"])

    (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    lr = schedule(state.itm_step)
    params, opt_state = dict(state.params), dict(state.opt_state)
    for tower in optim.TOWERS:
      params[tower], opt_state[tower] = optim.apply_tower_update(
        optimizers[tower], state.opt_state[tower], state.params[tower], grads[tower], lr
      )
    metrics = {
      "train/loss": total,
      "train/itm_loss": total,
      "train/learning_rate": lr,
      **{f"train/{k}": v for k, v in terms.items()},
      **{f"health/grad_norm_{t}": _tree_norm(grads[t]) for t in optim.TOWERS},
      **{f"health/param_norm_{t}": _tree_norm(params[t]) for t in optim.TOWERS},
      "train/gamma1": jnp.float32(lc.gamma1),
      "train/gamma2": jnp.float32(lc.gamma2),
      "train/gamma3": jnp.float32(lc.gamma3),
    }
    new_state = state.replace(
      step=state.step + 1,
      itm_step=state.itm_step + 1,
      params=params,
      opt_state=opt_state,
      batch_stats=batch_stats,
    )
    return new_state, metrics

  return itm_step


def make_mlm_step(config, model, optimizers, schedule):
  lc = config.loss

  def mlm_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    _, dropout_rng = jax.random.split(rng)

    def loss_fn(text_params):
      params = {**state.params, "text": text_params}
      logits = model.apply(
        {"params": params, "batch_stats": state.batch_stats},
        batch["mlm_tokens"],
        train=True,
        method=model.mlm_logits,
        rngs={"dropout": dropout_rng},
      )
      loss, accuracy = losses.mlm_loss(
        logits, batch["mlm_targets"], batch["mlm_weights"], excluded_id=model.mlm_excluded_id
      )
      return lc.mlm_weight * loss, accuracy

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["text"])
    lr = schedule(state.itm_step)  # the epoch is the ITM stream's, as in the original
    text_params, text_opt = optim.apply_tower_update(
      optimizers["text"], state.opt_state["text"], state.params["text"], grads, lr
    )
    metrics = {
      "train/loss": loss,
      "train/mlm_loss": loss,
      "train/mlm_accuracy": accuracy,
      "train/learning_rate": lr,
      "health/grad_norm_text": _tree_norm(grads),
      "health/param_norm_text": _tree_norm(text_params),
    }
    new_state = state.replace(
      step=state.step + 1,
      params={**state.params, "text": text_params},
      opt_state={**state.opt_state, "text": text_opt},
    )
    return new_state, metrics

  return mlm_step


# ----------------------------------------------------------------------------------------------
# Dispatch: the step of each kind, compiled once; FLOPs counted; finiteness tracked on device.
# ----------------------------------------------------------------------------------------------
def is_checked_for_finiteness(name: str) -> bool:
  """The metrics whose finiteness the run depends on: the loss and the health norms."""
  return name == "train/loss" or name.startswith("health/")


@jax.jit
def _first_non_finite(first: jax.Array, done: jax.Array, metrics: dict) -> jax.Array:
  """`first` if already set (>= 0), else `done` when any of `metrics` is NaN/inf, else -1."""
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
  return jnp.where((first < 0) & ~finite, done, first).astype(jnp.int32)


class TrainSteps:
  """Runs the update step of each step's kind (`kind_of(step)`), each kind compiled once per batch
  shape (one per text-length bucket, `config.text_buckets`).

  Compilation is ahead of time on first use (the state is donated), so the FLOPs of one step of
  each kind and shape are known from XLA's cost analysis (`flops`: the last compiled of each kind)
  and the FLOPs executed are counted (`take_flops`). The first step whose loss or health norms
  were not finite is kept on the device and read only by `first_non_finite_step` (a host sync,
  made at the log cadence).
  """

  def __init__(self, jitted: Mapping[str, Callable], kind_of: Callable[[int], str]):
    self._jitted = dict(jitted)
    self._kind_of = kind_of
    self._compiled: dict[tuple, tuple[Any, float]] = {}
    self.flops: dict[str, float] = {}
    self._flops_done = 0.0
    self._first_non_finite: Any = np.int32(-1)

  @classmethod
  def create(cls, config, model, optimizers, schedule, mesh, state_shardings) -> TrainSteps:
    """The ITM and MLM steps of `config`, jitted over the mesh with the state donated."""
    batch_sharding = sharding.batch_sharding(mesh)
    steps = {
      "itm": make_itm_step(config, model, optimizers, schedule, make_objective(config, mesh), mesh),
      "mlm": make_mlm_step(config, model, optimizers, schedule),
    }
    jitted = {
      kind: jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
      )
      for kind, step in steps.items()
    }
    return cls(jitted, kind_of=lambda step: step_kind(config.seed, step, config.loss))

  def kind(self, step: int) -> str:
    """The kind of update `step` (0-based): which batch it takes and which compiled step runs."""
    return self._kind_of(step)

  def __call__(self, step: int, state: Any, batch: Any) -> tuple[Any, dict[str, jax.Array]]:
    """Runs step `step` (0-based) on `state` (donated); returns the new state and the metrics."""
    kind = self._kind_of(step)
    leaves, structure = jax.tree.flatten(batch)
    key = (kind, structure, *(np.shape(x) for x in leaves))
    if key not in self._compiled:
      compiled = self._jitted[kind].lower(state, batch).compile()
      self._compiled[key] = compiled, perf.compiled_flops(compiled)
      self.flops[kind] = self._compiled[key][1]
      length = ""
      if isinstance(batch, Mapping) and "tokens" in batch:
        length = f", {batch['tokens'].shape[1]} token positions"
      log.info(
        "compiled the %s step%s: %.3g FLOPs per device per step", kind, length, self.flops[kind]
      )
    compiled, flops = self._compiled[key]
    state, metrics = compiled(state, batch)
    self._flops_done += flops
    checked = {k: v for k, v in metrics.items() if is_checked_for_finiteness(k)}
    self._first_non_finite = _first_non_finite(self._first_non_finite, np.int32(step + 1), checked)
    return state, metrics

  def take_flops(self) -> float:
    """FLOPs per device executed since the last call."""
    flops, self._flops_done = self._flops_done, 0.0
    return flops

  def first_non_finite_step(self) -> int | None:
    """The number of updates done when the loss or a health norm first was NaN/inf, if it was."""
    first = int(jax.device_get(self._first_non_finite))
    return first if first >= 0 else None
