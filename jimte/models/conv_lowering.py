"""A convolution whose kernel gradient is summed over interleaved pieces of the batch.

XLA:CPU computes a convolution's kernel gradient as one convolution over the whole batch, after
transposing the activation and the output gradient to a batch-minor layout. On the paper tower's
high-resolution stages (8-32 channels) that is slow and grows faster than the batch: at 1024 px,
batch 32, the early stages' kernel gradients took 1.14 s and their transposes 0.79 s of the stages'
2.60 s of thunks, and 0.84 s and 0.40 s of 1.88 s in pieces of 16 MB (`python -m
benchmarks.profile_early_stages`, 2026-12-07; README). Only the order of the sums changes: the
forward pass and the input gradient are XLA's own.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """A square NHWC / HWIO convolution with `pad` zeros on every side."""
  return jax.lax.conv_general_dilated(
    x, kernel, (stride, stride), [(pad, pad)] * 2, dimension_numbers=_NUMBERS
  )


def kernel_grad_pieces(
  batch: int, batch_shards: int, bytes_per_image: int, budget_bytes: int
) -> int:
  """How many pieces to cut each device's batch into for the kernel gradient: the fewest whose
  images (activation and output gradient, `bytes_per_image` each) fit in `budget_bytes`.

  The pieces interleave the batch (piece i holds images i, i + n, ...), so that with the batch
  split over `batch_shards` devices every piece takes the same images from every device's share
  and none moves. 1 (no cutting) when the budget is 0, the whole share fits, or the batch does
  not split evenly over the shards."""
  if budget_bytes <= 0 or batch_shards <= 0 or batch % batch_shards:
    return 1
  local = batch // batch_shards
  for pieces in range(1, local + 1):
    if local % pieces == 0 and (local // pieces) * bytes_per_image <= budget_bytes:
      return pieces
  return local


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_pieced_kernel_grad(
  x: jax.Array, kernel: jax.Array, stride: int, pad: int, pieces: int
) -> jax.Array:
  """`conv(x, kernel, stride, pad)`; its kernel gradient is the sum of `pieces` kernel gradients,
  each over every `pieces`-th image (accumulated in float32)."""
  return conv(x, kernel, stride, pad)


def _forward(x, kernel, stride, pad, pieces):
  return conv(x, kernel, stride, pad), (x, kernel)


def _backward(stride, pad, pieces, residuals, grad):
  x, kernel = residuals
  # Transposes of the linear maps, not vjps: a vjp would also trace the forward conv again (dead
  # code that XLA drops, but that FLOP counts of the traced step would include).
  (input_grad,) = jax.linear_transpose(lambda inputs: conv(inputs, kernel, stride, pad), x)(grad)
  n = x.shape[0]
  xs = x.reshape(n // pieces, pieces, *x.shape[1:])
  grads = grad.reshape(n // pieces, pieces, *grad.shape[1:])
  kernel_grad = jnp.zeros(kernel.shape, jnp.float32)
  for i in range(pieces):
    (piece,) = jax.linear_transpose(lambda k, i=i: conv(xs[:, i], k, stride, pad), kernel)(
      grads[:, i]
    )
    kernel_grad = kernel_grad + piece.astype(jnp.float32)
  return input_grad, kernel_grad.astype(kernel.dtype)


conv_pieced_kernel_grad.defvjp(_forward, _backward)
