"""A convolution whose kernel gradient is summed over interleaved pieces of the batch.

XLA:CPU computes a convolution's kernel gradient as one convolution over the whole batch, after
transposing the activation and the output gradient to a batch-minor layout. On the paper tower's
high-resolution stages (8-32 channels) that is slow and grows faster than the batch: at 1024 px,
batch 32, the early stages' kernel gradients took 1.14 s and their transposes 0.79 s of the stages'
2.60 s of thunks, and 0.84 s and 0.40 s of 1.88 s in pieces of 16 MB (`python -m
benchmarks.profile_early_stages`, 2026-12-07; README). The input gradient of a strided conv is
the transpose of its phases' stride-1 convs (`conv_in_phases`), not of XLA's strided conv. Only
the order of the sums changes: the forward pass is XLA's own.
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


def conv_in_phases(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """`conv(x, kernel, stride, pad)` as a sum of stride-1 convolutions, one per phase (dy, dx) of
  the stride: the padded input's pixels dy, dx modulo `stride` with the kernel's taps of the same
  phase. The same products (no zero taps) and sums. Its transpose, the input gradient, is made of
  stride-1 convolutions, where XLA:CPU's transpose of a strided conv convolves an input-dilated
  gradient (zeros between the values: 3/4 of its products at stride 2; 2.09 s of the early
  stages' 10.7 s of thunks at 2048 px, B=32, README)."""
  if stride == 1:
    return conv(x, kernel, 1, pad)
  k, s = kernel.shape[0], stride
  h, w = x.shape[1:3]
  taps = -(-k // s)
  out_h, out_w = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
  rows, cols = s * (out_h + taps - 1), s * (out_w + taps - 1)
  # Pad to whole phases; a negative high pad crops rows and columns no window reaches.
  padded = jax.lax.pad(
    x,
    jnp.zeros((), x.dtype),
    [(0, 0, 0), (pad, rows - h - pad, 0), (pad, cols - w - pad, 0), (0, 0, 0)],
  )
  out = None
  for dy in range(min(s, k)):
    for dx in range(min(s, k)):
      sub_kernel = kernel[dy::s, dx::s]
      t_y, t_x = sub_kernel.shape[:2]  # the phase's input: just what its windows read
      phase = padded[:, dy::s, dx::s][:, : out_h + t_y - 1, : out_w + t_x - 1]
      part = conv(phase, sub_kernel, 1, 0)
      out = part if out is None else out + part
  return out


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
  (input_grad,) = jax.linear_transpose(
    lambda inputs: conv_in_phases(inputs, kernel, stride, pad), x
  )(grad)
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
