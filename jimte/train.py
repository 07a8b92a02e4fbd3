"""The jimte trainer: one importable `train_and_evaluate(config, workdir)`, in banner-commented
sections.

Resume order: the work dir's latest complete checkpoint, else a fresh start. Every step is a pure
function of (train state, batch); the state holds params, batch statistics, per-tower optimizer
states, the step and the RNG, so a resumed run continues exactly where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jimte import checkpointing, losses, optim, parallel, perf
from jimte import data as data_lib
from jimte.evaluate import registry as eval_registry
from jimte.metrics import MetricWriter
from jimte.models.joimternet import build_model

log = logging.getLogger("jimte.train")


class NonFiniteError(FloatingPointError):
  """A loss or gradient norm became NaN/inf: the run stops, the last good checkpoint stays."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates done
  params: Any  # {'image': ..., 'text': ...}
  batch_stats: Any  # BatchNorm running statistics of the image tower
  opt_state: Any  # {'image': optax state, 'text': optax state}
  rng: jax.Array  # uint32 key data; step keys are fold_in(rng, step)


# ----------------------------------------------------------------------------------------------
# Durations: every length of the run in steps, resolved in one place.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Durations:
  steps_per_epoch: int
  total_steps: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, num_train: int) -> Durations:
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch < 1:
      raise ValueError(
        f"config.batch_size={config.batch_size} exceeds the train split ({num_train} examples)"
      )
    total = int(config.get("total_steps", 0) or 0) or int(
      math.ceil(config.num_epochs * steps_per_epoch)
    )
    return cls(steps_per_epoch=steps_per_epoch, total_steps=total)


def step_kind(seed: int, step: int, loss_config: ml_collections.ConfigDict) -> str:
  """'itm' or 'mlm' for this step: the paper's mixture, decided from (seed, step) so resume is
  exact."""
  if not loss_config.mixture:
    return "itm"
  draw = np.random.default_rng([seed, step, 0x17E]).random()
  return "itm" if draw < loss_config.itm_probability else "mlm"


def _tree_norm(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return (
    jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
    if leaves
    else jnp.zeros(())
  )


# ----------------------------------------------------------------------------------------------
# Train state: created directly with its shardings (jit(init, out_shardings=...)).
# ----------------------------------------------------------------------------------------------
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
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=opt_state,
      rng=jax.random.key_data(state_rng),
    )

  abstract = jax.eval_shape(init, rng)
  shardings = parallel.param_shardings(
    abstract, mesh, tuple(config.mesh.rules), fsdp_min_size=config.mesh.fsdp_min_size
  )
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


# ----------------------------------------------------------------------------------------------
# Steps: an image-text matching step on both towers, an MLM step on the text tower alone.
# ----------------------------------------------------------------------------------------------
def make_objective(config, mesh) -> Callable:
  """The L_ITM objective over the global batch (shard_map with explicit collectives)."""
  lc = config.loss
  return parallel.sharded_itm_loss(
    mesh,
    weights=dict(lc.weights),
    gamma1=lc.gamma1,
    gamma2=lc.gamma2,
    gamma3=lc.gamma3,
    sentence_margin=lc.sentence_margin,
    word_margin=lc.word_margin,
    local_pairs=lc.local_pairs,
    text_block=(lc.text_block or None),
  )


def make_itm_step(config, model, optimizers, schedule, objective, mesh):
  lc = config.loss

  def itm_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    neg_rng, dropout_rng = jax.random.split(rng)
    n = batch["image"].shape[0]
    study_ids = batch["study_index"] if lc.mask_same_study else None

    def loss_fn(params):
      out, new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats},
        batch["image"],
        batch["tokens"],
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": dropout_rng},
      )
      regions = out.regions.reshape(n, -1, out.regions.shape[-1])
      if lc.negatives == "hardest":
        neg_idx = "hardest"  # VSE++: mined per level from the scores, same study excluded
      elif lc.negatives == "random":
        shards = parallel.num_batch_shards(mesh) if lc.local_pairs == "device" else 1
        neg_idx = parallel.sample_negatives(neg_rng, n, shards)
      else:
        raise ValueError(
          f"config.loss.negatives: unknown {lc.negatives!r} (expected random | hardest)"
        )
      total, terms = objective(
        out.image_global, out.sentence, regions, out.words, out.word_mask, neg_idx, study_ids
      )
      return total, (terms, new_vars["batch_stats"])

    (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    lr = schedule(state.step)
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
      step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats
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
      loss, accuracy = losses.mlm_loss(logits, batch["mlm_targets"], batch["mlm_weights"])
      return lc.mlm_weight * loss, accuracy

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["text"])
    lr = schedule(state.step)
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


def check_finite(step: int, metrics: dict[str, float]) -> None:
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    raise NonFiniteError(
      f"non-finite values at step {step}: {bad}. The run stops here; the last checkpoint saved "
      "before this step is intact and a restart resumes from it."
    )


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------
def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  stop_after_steps: int | None = None,
  progress: bool = True,
) -> tuple[dict[str, float], TrainState]:
  """Trains per `config` in `workdir` (resuming if it holds a checkpoint), then evaluates.

  `stop_after_steps` ends the loop early at that step (after saving), as a pre-empted run would;
  it does not change the schedule. A SIGTERM does the same at the end of the current step.
  Evaluation runs only once the schedule is complete. Returns (metrics, final train state).
  """
  # ---- Setup: mesh, data, tokenizer.
  is_chief = jax.process_index() == 0
  _gfile().makedirs(workdir)
  mesh = parallel.make_mesh(config.mesh)
  data = data_lib.DataBundle.create(config, workdir)
  durations = Durations.from_config(config, data.num_train)
  if is_chief:
    with _gfile().GFile(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  log.info(
    "mesh %s, %d train examples, %d steps/epoch, %d steps",
    dict(mesh.shape),
    data.num_train,
    durations.steps_per_epoch,
    durations.total_steps,
  )

  # ---- Model, optimizers, state (created sharded).
  model_config = config.model.copy_and_resolve_references()
  model_config.text.vocab_size = data.tokenizer.vocab_size
  model = build_model(model_config)
  optimizers = optim.make_optimizers(config.optim)
  schedule = optim.make_schedule(config.optim, durations.steps_per_epoch, durations.total_steps)
  state, state_shardings = init_train_state(
    config, model, optimizers, mesh, jax.random.key(config.seed)
  )

  # ---- Resume from the work dir.
  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=config.keep_checkpoints,
    keep_best=config.get("keep_best_checkpoints", 0),
    best_metric=config.get("best_metric", ""),
    best_mode=config.get("best_mode", "max"),
  )
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(checkpointing.abstract_like(state, state_shardings))
    log.info("resumed from step %d (%s)", int(state.step), meta)
  start_step = int(state.step)

  # ---- Compiled steps (state donated).
  batch_sharding = parallel.batch_sharding(mesh)
  objective = make_objective(config, mesh)
  itm_step = jax.jit(
    make_itm_step(config, model, optimizers, schedule, objective, mesh),
    in_shardings=(state_shardings, batch_sharding),
    out_shardings=(state_shardings, None),
    donate_argnums=(0,),
  )
  mlm_step = jax.jit(
    make_mlm_step(config, model, optimizers, schedule),
    in_shardings=(state_shardings, batch_sharding),
    out_shardings=(state_shardings, None),
    donate_argnums=(0,),
  )

  steps = perf.CompiledSteps({"itm": itm_step, "mlm": mlm_step})
  peak_flops = perf.device_peak_flops(config.get("peak_flops_per_device", 0.0))
  writer = MetricWriter(workdir, enabled=is_chief)
  stop_requested = {"signal": None}

  def on_sigterm(signum, frame):  # pre-emption: finish the step, save, exit cleanly
    stop_requested["signal"] = signum

  multi_process = jax.process_count() > 1
  # One process: our own SIGTERM handler. Several: jax.distributed's preemption service catches the
  # notice and agrees on one step at which every process stops (reached_preemption_sync_point).
  previous_handler = (
    signal.signal(signal.SIGTERM, on_sigterm) if _in_main_thread() and not multi_process else None
  )

  end_step = (
    durations.total_steps
    if stop_after_steps is None
    else min(stop_after_steps, durations.total_steps)
  )
  train_iter = data.train_batches(mesh, start_step=start_step)
  bar = _progress(start_step, end_step, enabled=progress and is_chief)
  last_log_time, last_log_step, last_metrics = time.perf_counter(), start_step, {}
  flops_since_log = 0.0
  examples_per_step = config.batch_size
  try:
    for step in range(start_step, end_step):
      batch = next(train_iter)
      kind = step_kind(config.seed, step, config.loss)
      state, metrics = steps(kind, state, batch)
      flops_since_log += steps.flops[kind]
      done = step + 1
      if config.check_finite_every_steps and done % config.check_finite_every_steps == 0:
        host_metrics = jax.device_get(metrics)
        check_finite(
          done,
          {k: v for k, v in host_metrics.items() if k == "train/loss" or k.startswith("health/")},
        )
        last_metrics.update(host_metrics)
      if done % config.log_every_steps == 0 or done == end_step:
        host_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        last_metrics.update(host_metrics)
        now = time.perf_counter()
        rate = (done - last_log_step) * examples_per_step / max(now - last_log_time, 1e-9)
        host_metrics["perf/examples_per_sec"] = rate
        host_metrics["perf/examples_per_sec_per_device"] = rate / jax.device_count()
        elapsed = max(now - last_log_time, 1e-9)
        host_metrics["perf/tflops_per_sec_per_device"] = flops_since_log / elapsed / 1e12
        if peak_flops:
          host_metrics["perf/mfu"] = flops_since_log / elapsed / peak_flops
        flops_since_log = 0.0
        host_metrics["train/epoch"] = done / durations.steps_per_epoch
        writer.write_scalars(done, host_metrics)
        last_log_time, last_log_step = now, done
        bar.set_postfix(loss=f"{host_metrics['train/loss']:.3f}", ex_s=f"{rate:.1f}")
      bar.update(1)
      if multi_process and multihost_utils.reached_preemption_sync_point(done):
        stop_requested["signal"] = "preemption notice"
      eval_metrics = None
      if (
        config.get("eval_every_steps", 0)
        and done % config.eval_every_steps == 0
        and done < durations.total_steps
      ):
        eval_metrics = eval_registry.run_all(config, model, state, data, mesh, workdir, writer)
      if (
        done % config.checkpoint_every_steps == 0
        or done == end_step
        or stop_requested["signal"]
        or eval_metrics is not None
      ):
        ckpt.save(done, state, meta=_checkpoint_meta(config, done, data), metrics=eval_metrics)
      if stop_requested["signal"]:
        log.warning("received signal %s: saved step %d, exiting", stop_requested["signal"], done)
        break
  finally:
    bar.close()
    ckpt.wait()
    writer.flush()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)

  # ---- Evaluate (chosen by config.evals).
  results = {}
  if int(state.step) >= durations.total_steps:
    results = eval_registry.run_all(config, model, state, data, mesh, workdir, writer)
    if is_chief:
      with _gfile().GFile(os.path.join(workdir, "final_metrics.json"), "w") as f:
        json.dump(
          {**{k: float(v) for k, v in results.items()}, "step": int(state.step)}, f, indent=2
        )
  ckpt.close()
  writer.close()
  return {**last_metrics, **results, "step": int(state.step)}, state


def _checkpoint_meta(config, step: int, data) -> dict:
  return {
    "step": int(step),
    "examples_seen": int(step) * int(config.batch_size),
    "tokenizer": data.tokenizer_dir,
    "seed": int(config.seed),
  }


def _gfile():
  """tf.io.gfile: files in the work dir, which may be local or on GCS."""
  import tensorflow as tf

  return tf.io.gfile


def _in_main_thread() -> bool:
  import threading

  return threading.current_thread() is threading.main_thread()


def _progress(start: int, total: int, enabled: bool):
  from tqdm import tqdm

  return tqdm(
    total=total, initial=start, disable=not enabled, dynamic_ncols=True, desc="train", unit="step"
  )
