"""One process of the two-process check of `jimte.batches.trim_text` (tests/test_batches.py).

Each process makes host batches whose reports use a different number of token positions (process
1's shorter in one batch, longer in another), process 1 starts late (held back, as pod workers are
never in step), and both cut their batches; it prints one JSON line: the kept lengths.

  python -m launch.multiprocess --num_processes 2 --module tests._trim_text_main
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np


def host_batch(used: int, max_len: int = 48) -> dict[str, np.ndarray]:
  tokens = np.zeros((2, max_len), np.int32)
  tokens[0, :used] = 7
  return {
    "tokens": tokens,
    "mlm_weights": np.zeros((2, max_len), np.float32),
    "index": np.arange(2),
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if args.process_id == 1:
    time.sleep(3.0)  # held back: process 0 reaches the first allgather long before
  jax.distributed.initialize(
    args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id
  )
  from jimte import batches

  # Used positions per batch: process 0 [10, 30, 0], process 1 [20, 5, 0].
  used = [[10, 30, 0], [20, 5, 0]][jax.process_index()]
  if jax.process_index() == 1:
    time.sleep(2.0)  # and behind again before the batches
  kept = [
    {k: list(v.shape) for k, v in b.items()}
    for b in batches.trim_text((host_batch(u) for u in used), (16, 32, 48))
  ]
  print("TRIMMED " + json.dumps({"process": jax.process_index(), "shapes": kept}), flush=True)


if __name__ == "__main__":
  main()
