"""The jimte trainer: one importable `train_and_evaluate(config, workdir)`, in banner-commented
sections.

Resume order: the work dir's latest complete checkpoint, else a fresh start. The train state and
the update steps are `jimte.steps`, the evaluators `jimte.evaluate`. The loop body is its steps in
order: update; check finiteness and log (at the log cadence); evaluate (at each evaluator's
cadence); save (at the checkpoint cadence, on a stop request, after an evaluation); stop. NaN/inf is
tracked on the device every step and read at the log cadence and before every save, so a checkpoint
never holds the state after a non-finite step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jimte import checkpointing, optim, perf, sharding
from jimte import data as data_lib
from jimte.evaluate import registry as eval_registry
from jimte.metrics import MetricWriter
from jimte.models.joimternet import build_model
from jimte.steps import (
  TrainState,
  TrainSteps,
  init_train_state,
  is_checked_for_finiteness,
  updates_for_itm_steps,
)

log = logging.getLogger("jimte.train")


class NonFiniteError(FloatingPointError):
  """A loss or gradient norm became NaN/inf: the run stops, the last good checkpoint stays."""


# ----------------------------------------------------------------------------------------------
# Durations: every length of the run, resolved in one place. Lengths count image-text (ITM) steps,
# as the original's epochs do (a pass of ITM steps over the pairs); with the ITM/MLM mixture the
# MLM updates come on top, so a run makes more updates than ITM steps (`updates_for_itm_steps`).
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Durations:
  steps_per_epoch: int  # ITM steps per epoch: train pairs // global batch
  total_steps: int  # ITM steps of the whole run

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

  def end_update(self, config: ml_collections.ConfigDict, update: int, itm_step: int) -> int:
    """The update count at which the run is complete, from a state at (`update`, `itm_step`):
    right after its last ITM step."""
    remaining = max(self.total_steps - itm_step, 0)
    return update + updates_for_itm_steps(config.seed, update, remaining, config.loss)


# ----------------------------------------------------------------------------------------------
# The loop's pieces: the finiteness check, the train log, stop requests.
# ----------------------------------------------------------------------------------------------
def check_finite(steps: TrainSteps, done: int, metrics: dict) -> None:
  """Raises `NonFiniteError` if any step so far had a NaN/inf loss or health norm (a host sync)."""
  first = steps.first_non_finite_step()
  if first is None:
    return
  latest = jax.device_get({k: v for k, v in metrics.items() if is_checked_for_finiteness(k)})
  bad = {k: float(v) for k, v in latest.items() if not np.isfinite(v)}
  raise NonFiniteError(
    f"non-finite values at step {first} (the loss or a health norm; at step {done}: {bad}). The "
    f"run stops here; the last checkpoint, saved before step {first}, is intact and a restart "
    "resumes from it."
  )


@dataclasses.dataclass
class TrainLog:
  """Writes the train metrics at the log cadence, with throughput, FLOP/s, MFU and the epoch."""

  writer: MetricWriter
  examples_per_step: int
  steps_per_epoch: int
  peak_flops: float  # per device; 0: unknown, no MFU
  last_step: int
  last_time: float = dataclasses.field(default_factory=time.perf_counter)

  def write(
    self, done: int, itm_done: int, metrics: dict, flops: float
  ) -> tuple[dict[str, float], float]:
    """Writes update `done`'s metrics (`itm_done` ITM steps so far) and the rates since the last
    write (`flops` executed per device); returns the metrics on the host and the examples/s."""
    step_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    elapsed = max(now - self.last_time, 1e-9)
    rate = (done - self.last_step) * self.examples_per_step / elapsed
    rates = {
      "perf/examples_per_sec": rate,
      "perf/examples_per_sec_per_device": rate / jax.device_count(),
      "perf/tflops_per_sec_per_device": flops / elapsed / 1e12,
    }
    if self.peak_flops:
      rates["perf/mfu"] = flops / elapsed / self.peak_flops
    epoch = {"train/epoch": itm_done / self.steps_per_epoch, "train/itm_steps": float(itm_done)}
    self.writer.write_scalars(done, {**step_metrics, **rates, **epoch})
    self.last_time, self.last_step = now, done
    return step_metrics, rate


class StopRequests:
  """Pre-emption, as a context: the run saves where it is and exits cleanly.

  One process: our own SIGTERM handler (installed from the main thread). Several: jax.distributed's
  preemption service catches the notice and agrees on one step at which every process stops.
  """

  def __init__(self):
    self.reason: str | int | None = None
    self._multi_process = jax.process_count() > 1
    self._previous_handler = None

  def __enter__(self) -> StopRequests:
    if not self._multi_process and _in_main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)

  def _on_sigterm(self, signum, frame) -> None:  # finish the step, save, exit
    self.reason = signum

  def requested(self, done: int) -> bool:
    """Whether to stop after step `done` (in a multi-process run, a collective every step)."""
    if self._multi_process and multihost_utils.reached_preemption_sync_point(done):
      self.reason = "preemption notice"
    return self.reason is not None


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
  Evaluators with `every_steps` > 0 also run during training; all run once the schedule is
  complete. Returns (metrics, final train state).
  """
  # ---- Setup: evaluators (a bad entry fails here, before any data is read), mesh, data.
  evaluators = eval_registry.build_evaluators(config)
  is_chief = jax.process_index() == 0
  _gfile().makedirs(workdir)
  mesh = sharding.make_mesh(config.mesh)
  data = data_lib.DataBundle.create(config, workdir, eval_splits=[e.split for e in evaluators])
  durations = Durations.from_config(config, data.num_train)
  if is_chief:
    with _gfile().GFile(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # ---- Model, optimizers, state (created sharded), resumed from the work dir.
  model_config = config.model.copy_and_resolve_references()
  model_config.text.vocab_size = data.tokenizer.vocab_size
  model = build_model(model_config, sharding.num_batch_shards(mesh))
  optimizers = optim.make_optimizers(config.optim)
  schedule = optim.make_schedule(config.optim, durations.steps_per_epoch, durations.total_steps)
  state, state_shardings = init_train_state(
    config, model, optimizers, mesh, jax.random.key(config.seed)
  )
  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=config.keep_checkpoints,
    keep_best=config.get("keep_best_checkpoints", 0),
    best_metric=config.get("best_metric", ""),
    best_mode=config.get("best_mode", "max"),
  )
  latest = ckpt.latest_step()  # process 0's answer on every process
  if latest is not None:
    state, meta = ckpt.restore(checkpointing.abstract_like(state, state_shardings), step=latest)
    log.info("resumed from step %d (%s)", int(state.step), meta)
  elif config.get("init_from"):
    state, counts = checkpointing.init_from_run(state, state_shardings, config.init_from)
    log.info(
      "initialised from %s: %d parameter arrays taken, %d new",
      config.init_from,
      counts["taken"],
      counts["new"],
    )
  start_step, start_itm = int(state.step), int(state.itm_step)
  schedule_end = durations.end_update(config, start_step, start_itm)
  log.info(
    "mesh %s, %d train examples, %d ITM steps/epoch, %d ITM steps, %d updates in all",
    dict(mesh.shape),
    data.num_train,
    durations.steps_per_epoch,
    durations.total_steps,
    schedule_end,
  )

  # ---- Steps (compiled once per kind), evaluators (encoder jitted once), metric sinks.
  steps = TrainSteps.create(config, model, optimizers, schedule, mesh, state_shardings)
  writer = MetricWriter(workdir, enabled=is_chief)
  evals = eval_registry.EvalRunner(
    evaluators, model=model, data=data, mesh=mesh, workdir=workdir, writer=writer
  )
  evals.check()
  if start_step == 0:  # the untrained model's figures, printed beside the trained ones at the end
    evals.run_untrained(state)
  else:
    evals.load_untrained()

  # ---- The loop: update; check finiteness and log; evaluate; save; stop. Two streams, each at its
  # ---- own position: image-text batches for ITM steps, report batches for MLM steps.
  end_step = schedule_end if stop_after_steps is None else min(stop_after_steps, schedule_end)
  itm_done = start_itm
  batches = {"itm": data.train_batches(mesh, start_step=start_itm)}
  if config.loss.mixture:
    batches["mlm"] = data.mlm_batches(mesh, start_step=start_step - start_itm)
  bar = _progress(start_step, end_step, enabled=progress and is_chief)
  train_log = TrainLog(
    writer,
    examples_per_step=config.batch_size,
    steps_per_epoch=durations.steps_per_epoch,
    peak_flops=perf.device_peak_flops(config.get("peak_flops_per_device", 0.0)),
    last_step=start_step,
  )
  last_metrics: dict[str, float] = {}
  try:
    with StopRequests() as stop:
      for step in range(start_step, end_step):
        kind = steps.kind(step)
        state, metrics = steps(step, state, next(batches[kind]))
        done, itm_done = step + 1, itm_done + (kind == "itm")
        stopping = stop.requested(done)
        evaluating = evals.due(done) if done < schedule_end else []
        logging_now = done % config.log_every_steps == 0 or done == end_step
        saving = (
          done % config.checkpoint_every_steps == 0
          or done == end_step
          or stopping
          or bool(evaluating)
        )
        if logging_now or saving:
          check_finite(steps, done, metrics)
        if logging_now:
          step_metrics, rate = train_log.write(done, itm_done, metrics, steps.take_flops())
          last_metrics.update(step_metrics)
          bar.set_postfix(loss=f"{step_metrics['train/loss']:.3f}", ex_s=f"{rate:.1f}")
        bar.update(1)
        eval_metrics = evals.run(state, done, evaluating) if evaluating else None
        if saving:
          meta = _checkpoint_meta(config, done, itm_done, data)
          ckpt.save(done, state, meta=meta, metrics=eval_metrics)
        if stopping:
          log.warning("received signal %s: saved step %d, exiting", stop.reason, done)
          break
  finally:
    bar.close()
    ckpt.wait()
    writer.flush()

  # ---- Evaluate: every evaluator, once the schedule is complete.
  results = {}
  if int(state.itm_step) >= durations.total_steps:
    results = evals.run(state, int(state.step))
    if is_chief:
      with _gfile().GFile(os.path.join(workdir, "final_metrics.json"), "w") as f:
        json.dump(
          {**{k: float(v) for k, v in results.items()}, "step": int(state.step)}, f, indent=2
        )
  ckpt.close()
  writer.close()
  return {**last_metrics, **results, "step": int(state.step)}, state


def _checkpoint_meta(config, step: int, itm_steps: int, data) -> dict:
  """What a checkpoint records beside the state (the stream positions are in the state too)."""
  return {
    "step": int(step),
    "itm_steps": int(itm_steps),  # the image-text stream's position
    "mlm_steps": int(step) - int(itm_steps),  # the MLM stream's position
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
