"""Forward + backward speed and memory of the word-level CE objective (region-word attention).

Times `value_and_grad` of `i2t + t2i` of the word CE (`jimte.losses.ce_from_scores` of 10 Z from
`region_word_scores`) with respect to the regions and the words, and compares the useful FLOPs
12 B^2 R T D (the forward's two feature contractions plus their four backward ones) with a float32
matmul peak timed in the same run, interleaved with the steps.

    python benchmarks/bench_region_word.py    # paper sizes: B=32, R=16x16, T=159, D=512
    python benchmarks/bench_region_word.py --text-block 2,4,8,32 --method gram,direct
    python benchmarks/bench_region_word.py --batch 8 --regions 64 --words 32 --dim 64 --repeats 2

Measured on the 2-core development machine (jax 0.10.2, float32, B=32 R=256 T=159 D=512, automatic
block of 3 texts): 1.72 s per step at best, about 149 GFLOP/s useful, 70-90% of the matmul peak
timed alongside (166-212 GFLOP/s, the machine is shared), 119 MiB of temporaries. At 4 texts per
block the hand-written backward took 1.74 s and 147 MiB where autodiff of the same forward under
jax.checkpoint took 2.01 s and 275 MiB; the original PyTorch code takes ~31 s here.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import (
  compiled_temp_bytes,
  format_bytes,
  interleaved_best_times,
  matmul_probe,
)
from jimte import losses


def make_inputs(batch: int, n_regions: int, n_words: int, dim: int, dtype, seed: int = 0):
  """Random regions [B, R, D], words [B, T, D] and a mask with report lengths in [T/2, T]."""
  rng = np.random.default_rng(seed)
  regions = jnp.asarray(rng.standard_normal((batch, n_regions, dim)) / np.sqrt(dim), dtype)
  words = jnp.asarray(rng.standard_normal((batch, n_words, dim)) / np.sqrt(dim), dtype)
  lengths = rng.integers(max(1, n_words // 2), n_words + 1, size=batch)
  mask = jnp.asarray(np.arange(n_words)[None, :] < lengths[:, None])
  return regions, words, mask


def word_ce_step(text_block, method):
  """jit-able value_and_grad of the summed word CE w.r.t. (regions, words)."""

  def objective(regions, words, mask):
    scores = losses.region_word_scores(
      regions, words, mask, text_block=text_block, context_method=method
    )
    i2t, t2i = losses.ce_from_scores(10.0 * scores)
    return i2t + t2i

  return jax.value_and_grad(objective, argnums=(0, 1))


def parse_list(text: str, cast):
  """'2,4,auto' -> [2, 4, None] (None: the automatic choice)."""
  return [None if item in ("auto", "none") else cast(item) for item in text.split(",")]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--regions", type=int, default=256, help="R = H * W of the region grid")
  parser.add_argument("--words", type=int, default=159, help="T word slots per text")
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--text-block", default="auto", help="comma list of ints or 'auto'")
  parser.add_argument("--method", default="auto", help="comma list of auto, gram, direct")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument(
    "--repeats", type=int, default=3, help="timed rounds; each times every variant once"
  )
  parser.add_argument(
    "--peak-size", type=int, default=2048, help="n of the n^3 matmul for the peak"
  )
  args = parser.parse_args(argv)

  dtype = jnp.dtype(args.dtype)
  b, r, t, d = args.batch, args.regions, args.words, args.dim
  regions, words, mask = make_inputs(b, r, t, d, dtype)
  useful_flops = 12.0 * b * b * r * t * d
  print(
    f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s), jax {jax.__version__}"
  )
  print(
    f"B={b} R={r} T={t} D={d} {args.dtype}; "
    f"useful FLOPs 12*B^2*R*T*D = {useful_flops / 1e9:.1f} GFLOP"
  )

  variants = []  # (method, block label, jitted step, compiled temp bytes)
  for method, block in itertools.product(
    parse_list(args.method, str), parse_list(args.text_block, int)
  ):
    method = method or "auto"
    label = f"{losses.auto_text_block(b, b, r, t)}*" if block is None else str(block)
    step = word_ce_step(block, method)
    variants.append((method, label, jax.jit(step), compiled_temp_bytes(step, regions, words, mask)))

  # Time the variants and the peak matmul round-robin, so that bursts of load from other
  # processes on a shared machine hit them alike; keep each one's best time.
  matmul, matmul_args, matmul_flops = matmul_probe(args.peak_size)
  calls = [(matmul, matmul_args)] + [
    (jitted, (regions, words, mask)) for _, _, jitted, _ in variants
  ]
  seconds = interleaved_best_times(calls, rounds=args.repeats, warmup=1)
  peak = matmul_flops / seconds[0] / 1e9
  print(f"float32 matmul peak ({args.peak_size}^3, same run, interleaved): {peak:.1f} GFLOP/s")

  print(f"{'method':>7} {'block':>5} {'s/step':>8} {'GFLOP/s':>8} {'of peak':>8} {'temp mem':>10}")
  for (method, label, _, temp), step_seconds in zip(variants, seconds[1:], strict=True):
    gflops = useful_flops / step_seconds / 1e9
    print(
      f"{method:>7} {label:>5} {step_seconds:8.3f} {gflops:8.1f} {gflops / peak:8.1%}"
      f" {format_bytes(temp):>10}"
    )
  print("(* = automatic block size; useful FLOPs exclude the recomputation in the backward pass)")


if __name__ == "__main__":
  from jimte import hugepages

  hugepages.reexec_with_hugepages()  # before any buffer: XLA:CPU step times depend on it
  main()
