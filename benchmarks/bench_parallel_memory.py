"""Per-device memory and time of the sharded ITM objective as the device count grows.

At a fixed per-device batch n (the global batch is N = n * d), each device count d runs in its own
process with d simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=d), and for
each word-level scheme of `jimte.losses.itm_objective` reports the compiled temp bytes per
device of the jitted forward + backward (`memory_analysis()`) and its wall time:

- global:        Z over all N x N pairs by a ring of ppermutes with recomputation (memory flat in
  d);
- device:        Z over each device's n x n pairs only (no communication);
- global_gather: the naive version: all-gather every text, one dense region-word call (grows with
  d).

All simulated devices share this machine's cores, so wall time at d devices covers d devices' work
(the ring's N x n pairs per device: d^2 n^2 in all); read the time columns as the cost of the whole
mesh, and compare schemes within a row. Prints numbers, asserts nothing.

    python -m benchmarks.bench_parallel_memory --devices 1 2 4 8 --n 8 --regions 64 --words 32 --dim
    128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from jimte.losses import LOCAL_PAIRS


def worker(args: argparse.Namespace) -> None:
  """Runs inside a process with `args.worker` simulated devices; prints one JSON line per mode."""
  import jax
  import numpy as np

  from benchmarks._timing import time_fn
  from jimte import losses, sharding

  d = args.worker
  if jax.device_count() != d:
    raise SystemExit(f"expected {d} devices, got {jax.device_count()}")
  mesh = sharding.make_mesh(dict(axes=(("data", -1), ("fsdp", 1))))
  big = args.n * d
  batch_sharding = sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  put = lambda x: jax.device_put(x, batch_sharding)
  inputs = (
    put(rng.standard_normal((big, args.dim), np.float32)),
    put(rng.standard_normal((big, args.dim), np.float32)),
    put(rng.standard_normal((big, args.regions, args.dim), np.float32)),
    put(rng.standard_normal((big, args.words, args.dim), np.float32)),
    put(np.arange(args.words)[None, :] < rng.integers(args.words // 2, args.words + 1, (big, 1))),
  )
  for mode in args.modes:
    neg = losses.sample_negatives(jax.random.key(0), big, d if mode == "device" else 1)
    loss = losses.itm_objective(mesh, local_pairs=mode)
    step = jax.jit(
      jax.value_and_grad(
        lambda i, t, r, w, m, loss=loss, neg=neg: loss(i, t, r, w, m, neg)[0], argnums=(0, 1, 2, 3)
      )
    )
    compiled = step.lower(*inputs).compile()
    memory = compiled.memory_analysis()
    seconds = time_fn(compiled, *inputs, repeats=args.repeats, warmup=1)
    print(
      json.dumps(
        dict(
          devices=d,
          mode=mode,
          temp=int(memory.temp_size_in_bytes),
          arguments=int(memory.argument_size_in_bytes),
          seconds=seconds,
          pairs_per_device=args.n * (args.n if mode == "device" else big),
        )
      ),
      flush=True,
    )


def run_device_count(d: int, args: argparse.Namespace) -> list[dict]:
  """One fresh process with d simulated devices (the flag must precede jax's import)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={d}"
  ).strip()
  command = [
    sys.executable,
    "-m",
    "benchmarks.bench_parallel_memory",
    "--worker",
    str(d),
    "--n",
    str(args.n),
    "--regions",
    str(args.regions),
    "--words",
    str(args.words),
    "--dim",
    str(args.dim),
    "--repeats",
    str(args.repeats),
    "--modes",
    *args.modes,
  ]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f"worker with {d} devices failed:\n{done.stderr[-4000:]}")
  return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
  parser.add_argument("--modes", nargs="+", default=list(LOCAL_PAIRS), choices=LOCAL_PAIRS)
  parser.add_argument("--n", type=int, default=8, help="pairs per device")
  parser.add_argument("--regions", type=int, default=64)
  parser.add_argument("--words", type=int, default=32)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return

  from benchmarks._timing import format_bytes

  rows = [row for d in args.devices for row in run_device_count(d, args)]
  base = {row["mode"]: row for row in rows if row["devices"] == min(args.devices)}
  print(
    f"ITM objective, forward + backward, n={args.n} pairs/device, R={args.regions}, "
    f"T={args.words}, D={args.dim}, float32; temp = compiled temp bytes per device"
  )
  header = (
    f"{'mode':<14}{'devices':>8}{'N':>6}{'temp/device':>14}{'vs d=' + str(min(args.devices)):>9}"
    f"{'pairs/device':>14}{'time (all devices)':>20}{'time/pair (us)':>16}"
  )
  print(header)
  print("-" * len(header))
  for mode in args.modes:
    for row in (r for r in rows if r["mode"] == mode):
      ratio = row["temp"] / base[mode]["temp"]
      total_pairs = row["pairs_per_device"] * row["devices"]
      print(
        f"{mode:<14}{row['devices']:>8}{args.n * row['devices']:>6}"
        f"{format_bytes(row['temp']):>14}{ratio:>8.2f}x{row['pairs_per_device']:>14}"
        f"{row['seconds'] * 1e3:>17.1f} ms{row['seconds'] / total_pairs * 1e6:>16.1f}"
      )


if __name__ == "__main__":
  from jimte import hugepages

  hugepages.reexec_with_hugepages()  # before any buffer: XLA:CPU step times depend on it
  main()
