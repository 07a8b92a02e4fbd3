"""Metric sinks: TensorBoard event files (readable by `tensorboard --logdir WORKDIR`) and a
JSON-lines log, written by process 0 only. Metric names are namespaced by prefix: train/, eval/,
health/."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np


class MetricWriter:
  """Writes scalars to `<workdir>/tensorboard` and `<workdir>/metrics.jsonl` (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    import tensorflow as tf  # TensorFlow writes the event files; kept off the JAX import path.

    tf.config.set_visible_devices([], "GPU")
    tf.io.gfile.makedirs(workdir)  # local or GCS
    self._tf = tf
    self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
    self._jsonl = tf.io.gfile.GFile(os.path.join(workdir, "metrics.jsonl"), "a")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    with self._tb.as_default(step=int(step)):
      for name, value in clean.items():
        self._tf.summary.scalar(name, value)
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()

  def write_text(self, step: int, name: str, text: str) -> None:
    if not self.enabled:
      return
    with self._tb.as_default(step=int(step)):
      self._tf.summary.text(name, text)

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
