"""`python -m jimte.main` for a process that joins the cluster, then falls behind process 0.

For the skew test of tests/test_distributed_runs.py. `jax.distributed.initialize` returns only once
every process has connected, and so does creating the backend (it exchanges the topology), so a
late start cannot make the skew. This process instead waits after both, until the file
`$JIMTE_HOLD_UNTIL` exists or process `$JIMTE_HOLD_PEER_PID` (process 0) has used no CPU for a few
seconds, i.e. is blocked waiting for this one: process 0 runs ahead as far as it can, as on a pod
whose workers are never in step.
"""

from __future__ import annotations

import os
import time

import jax

from jimte import main

IDLE_WINDOW_S = 5.0  # process 0 is blocked once it used under IDLE_CPU_S in this long
IDLE_CPU_S = 0.1
MAX_HOLD_S = 600.0

_initialize = jax.distributed.initialize


def _cpu_seconds(pid: int) -> float:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _initialize_then_fall_behind(*args, **kwargs) -> None:
  _initialize(*args, **kwargs)
  jax.devices()  # creating the backend exchanges the topology: process 0 waits for it, not later
  until, peer = os.environ["JIMTE_HOLD_UNTIL"], int(os.environ["JIMTE_HOLD_PEER_PID"])
  start = window_start = time.monotonic()
  window_cpu = _cpu_seconds(peer)
  while not os.path.exists(until) and time.monotonic() - start < MAX_HOLD_S:
    time.sleep(0.05)
    if time.monotonic() - window_start >= IDLE_WINDOW_S:
      cpu = _cpu_seconds(peer)
      if cpu - window_cpu < IDLE_CPU_S:
        break
      window_start, window_cpu = time.monotonic(), cpu
  print(f"held back for {time.monotonic() - start:.1f}s", flush=True)


jax.distributed.initialize = _initialize_then_fall_behind

if __name__ == "__main__":
  main.run()
