"""XLA's convolution against the same sums as patches times kernel, per map size (SquareConv).

  python -m benchmarks.bench_small_convs                 # the paper tower's 3 x 3 block convs, B=8

`SquareConv` runs a conv as one matmul on output maps of at most `matmul_max_positions` positions
(default 4). This times forward + backward of a 3 x 3 conv both ways, interleaved, at the shapes the
paper tower's blocks have, to show where the threshold belongs. Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _timing
from jimte.models.image import SquareConv

# (in channels, out channels, input side, stride): the paper tower's block convs, small maps first.
SHAPES = (
  (512, 512, 2, 1),
  (512, 512, 4, 1),
  (256, 512, 8, 2),
  (256, 256, 8, 1),
  (128, 256, 16, 2),
  (128, 128, 16, 1),
  (64, 64, 32, 1),
  (32, 32, 64, 1),
)


def conv_grad(in_ch: int, out_ch: int, side: int, stride: int, batch: int, as_matmul: bool):
  """A jitted forward + backward of one 3 x 3 conv, and its arguments."""
  conv = SquareConv(out_ch, 3, stride=stride, matmul_max_positions=10**9 if as_matmul else 0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, side, side, in_ch)), jnp.float32)
  params = conv.init(jax.random.key(0), x[:1])

  def loss(params, x):
    return jnp.sum(conv.apply(params, x) ** 2)

  return jax.jit(jax.grad(loss, argnums=(0, 1))), (params, x)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args(argv)
  print(f"3x3 conv forward + backward, batch {args.batch_size}, float32; best of {args.rounds}")
  print("in -> out, map (stride): XLA conv ms / patches @ kernel ms")
  for in_ch, out_ch, side, stride in SHAPES:
    calls = [
      conv_grad(in_ch, out_ch, side, stride, args.batch_size, as_matmul)
      for as_matmul in (False, True)
    ]
    conv_s, matmul_s = _timing.interleaved_best_times(calls, rounds=args.rounds)
    out_side = (side - 1) // stride + 1
    print(
      f"{in_ch:4d} -> {out_ch:4d}, {side}x{side} -> {out_side}x{out_side} (s{stride}): "
      f"{1e3 * conv_s:8.1f} / {1e3 * matmul_s:8.1f}",
      flush=True,
    )


if __name__ == "__main__":
  from jimte import hugepages

  hugepages.reexec_with_hugepages()  # before any buffer: XLA:CPU step times depend on it
  main()
