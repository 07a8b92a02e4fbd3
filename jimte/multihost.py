"""Decisions that decide which collectives a process runs, made on process 0 and broadcast.

Pod workers are never in step: a process that looks at a file later than process 0 can see what
process 0 has just written (a saved tokenizer, a new checkpoint) and take another branch, with other
barriers, and the run fails or hangs. Every such decision (is there a saved tokenizer? the latest
checkpoint? which dataset directory?) goes through `from_process_0`, so all processes take it
identically. Each call is a collective: every process must make it, in the same order.
"""

from __future__ import annotations

import json
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")


def from_process_0(value: T) -> T:
  """Process 0's `value` (anything JSON can hold: bool, int, str, None, ...) on every process."""
  if jax.process_count() == 1:
    return value
  raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
  length = int(multihost_utils.broadcast_one_to_all(np.int32(len(raw))))
  buffer = raw if jax.process_index() == 0 else np.zeros(length, np.uint8)
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())
