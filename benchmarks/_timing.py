"""Timing helpers shared by the benchmarks: best-of-N wall time, this machine's matmul peak, memory.

The machine is shared and noisy, so benchmarks report speed as a fraction of a matmul peak
measured in the same run, ideally interleaved with the work being timed
(`interleaved_best_times` with `matmul_probe`), rather than as an absolute number alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Call = tuple[Callable[..., Any], tuple[Any, ...]]


def time_fn(fn: Callable[..., Any], *args: Any, repeats: int = 5, warmup: int = 1) -> float:
  """Best wall-clock seconds of `fn(*args)` over `repeats` runs, after `warmup` runs.

  Waits for every output with `jax.block_until_ready`, so asynchronous dispatch is timed too.
  Compile `fn` (`jax.jit`) beforehand or let the warm-up run absorb the compilation.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def interleaved_best_times(calls: Sequence[Call], rounds: int = 3, warmup: int = 1) -> list[float]:
  """Best seconds of each `(fn, args)` in `calls`, timing them round-robin for `rounds`.

  Interleaving spreads bursts of load from other processes over every call alike, so the
  ratios between the results stay meaningful on a shared machine.
  """
  for fn, args in calls:
    for _ in range(warmup):
      jax.block_until_ready(fn(*args))
  best = [float("inf")] * len(calls)
  for _ in range(rounds):
    for i, (fn, args) in enumerate(calls):
      best[i] = min(best[i], time_fn(fn, *args, repeats=1, warmup=0))
  return best


def matmul_probe(
  n: int = 2048, dtype: Any = jnp.float32
) -> tuple[Callable[..., Any], tuple[Any, ...], float]:
  """(jitted n x n x n matmul, its inputs, its FLOPs = 2 n^3), to time alongside other work."""
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (n, n), dtype)
  b = jax.random.normal(key_b, (n, n), dtype)
  return jax.jit(jnp.matmul), (a, b), 2.0 * n**3


def measure_matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype: Any = jnp.float32) -> float:
  """GFLOP/s of a jitted n x n x n matmul (2 n^3 FLOPs), best of `repeats`, on the default
  device."""
  matmul, args, flops = matmul_probe(n, dtype)
  return flops / time_fn(matmul, *args, repeats=repeats, warmup=1) / 1e9


def compiled_temp_bytes(fn: Callable[..., Any], *args: Any) -> int:
  """Temporary buffer bytes XLA allocates for `jax.jit(fn)(*args)` (excludes inputs/outputs)."""
  compiled = jax.jit(fn).lower(*args).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def format_bytes(num_bytes: float) -> str:
  """Human-readable size in binary units, e.g. '12.5 MiB'."""
  if abs(num_bytes) < 1024:
    return f"{int(num_bytes)} B"
  for unit in ("KiB", "MiB", "GiB"):
    num_bytes /= 1024
    if abs(num_bytes) < 1024 or unit == "GiB":
      return f"{num_bytes:.1f} {unit}"
  raise AssertionError("unreachable")
