"""Orbax checkpoints of the whole train state, plus a small JSON of run metadata.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it once
complete), so a process killed mid-save leaves the previous checkpoint as the latest complete one.
Kept: the last `keep` checkpoints, and optionally the best `keep_best` by a metric.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jimte import multihost


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with items 'state' (pytree) and 'meta' (JSON)."""

  def __init__(
    self,
    directory: str,
    *,
    keep: int = 2,
    keep_best: int = 0,
    best_metric: str = "",
    best_mode: str = "max",
    async_save: bool = True,
  ):
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    self._best_metric = best_metric if keep_best else ""
    policies = [checkpoint_managers.LatestN(n=max(keep, 1))]
    if keep_best and best_metric:
      policies.append(
        checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric],
          reverse=(best_mode == "min"),
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
      create=True,
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "meta")
    )

  def latest_step(self) -> int | None:
    """The latest complete checkpoint as process 0 sees it, on every process (a collective in a
    multi-process run: it decides whether all restore)."""
    return multihost.from_process_0(self.manager.latest_step())

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(
    self, step: int, state: Any, meta: dict, metrics: dict | None = None, force: bool = True
  ) -> bool:
    """Starts a (possibly asynchronous) save of `state` and `meta` at `step`.

    `metrics` (evaluation results) rank the checkpoint for `keep_best` if they hold `best_metric`;
    a checkpoint saved without it is kept only as one of the latest.
    """
    return self.manager.save(
      int(step),
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=None if self._best_metric and self._best_metric not in (metrics or {}) else metrics,
      force=force,
    )

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores into the structure, dtypes and shardings of `abstract_state` (ShapeDtypeStructs)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
      ),
    )
    return restored["state"], dict(restored["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs (with shardings when given) describing `tree`, for restoring into."""
  if shardings is None:
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def load_state_numpy(directory: str, step: int | None = None) -> tuple[Any, dict]:
  """The saved train state as nested dicts of host numpy arrays (any device count), and its meta.

  For inspection and comparisons across runs with different meshes; training resumes with
  `Checkpointer.restore`, which keeps the structure and shardings.
  """
  ckpt = Checkpointer(directory, async_save=False)
  step = ckpt.latest_step() if step is None else step
  ckpt.close()
  if step is None:
    raise FileNotFoundError(f"no complete checkpoint in {directory}")
  step_dir = os.path.join(ckpt.directory, str(step))
  reader = ocp.PyTreeCheckpointer()
  tree = reader.metadata(os.path.join(step_dir, "state")).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = reader.restore(
    os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(restore_args=restore_args)
  )
  with open(os.path.join(step_dir, "meta", "metadata")) as f:
    meta = json.load(f)
  return state, meta


def init_from_run(state: Any, state_shardings: Any, workdir: str) -> tuple[Any, dict[str, int]]:
  """`state` with the params and batch statistics of the latest checkpoint of run `workdir`.

  A parameter of the same path and shape is taken; one only this model has keeps its
  initialisation (e.g. a stage-2 head); a saved one of another shape, or one this model lacks, is
  an error naming it (nothing is silently dropped). The optimizer states stay fresh.
  Returns (state, counts of taken / new leaves).
  """
  from flax import traverse_util

  saved, _ = load_state_numpy(os.path.join(workdir, "checkpoints"))
  counts = {"taken": 0, "new": 0}
  merged = {}
  for collection in ("params", "batch_stats"):
    current = traverse_util.flatten_dict(getattr(state, collection), sep="/")
    shardings = traverse_util.flatten_dict(getattr(state_shardings, collection), sep="/")
    source = traverse_util.flatten_dict(saved.get(collection) or {}, sep="/")
    unknown = sorted(set(source) - set(current))
    if unknown:
      raise ValueError(
        f"config.init_from={workdir}: {collection} {unknown[0]!r} (and {len(unknown) - 1} more) "
        "of the saved run are not in this model"
      )
    out = {}
    for path, value in current.items():
      if path not in source:
        out[path], counts["new"] = value, counts["new"] + 1
        continue
      if tuple(source[path].shape) != tuple(value.shape):
        raise ValueError(
          f"config.init_from={workdir}: {collection} {path!r} has shape "
          f"{tuple(source[path].shape)} there, {tuple(value.shape)} in this model"
        )
      out[path] = jax.device_put(np.asarray(source[path], value.dtype), shardings[path])
      counts["taken"] += 1
    merged[collection] = traverse_util.unflatten_dict(out, sep="/")
  return state.replace(**merged), counts
