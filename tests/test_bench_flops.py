"""The benchmarks' model-FLOP counter against hand counts: matmuls, convolutions, their
gradients, loops and shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from benchmarks import _flops


def test_matmul_and_its_gradient():
  a = jax.ShapeDtypeStruct((6, 5), jnp.float32)
  b = jax.ShapeDtypeStruct((5, 7), jnp.float32)
  assert _flops.model_flops(jnp.matmul, a, b) == 2 * 6 * 5 * 7
  # d/da and d/db of sum(a @ b): two more products of the same size.
  grad = jax.grad(lambda a, b: jnp.sum(a @ b), argnums=(0, 1))
  assert _flops.model_flops(grad, a, b) == 3 * 2 * 6 * 5 * 7


def test_batched_einsum():
  x = jax.ShapeDtypeStruct((3, 4, 8), jnp.float32)
  y = jax.ShapeDtypeStruct((3, 8, 2), jnp.float32)
  assert (
    _flops.model_flops(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), x, y) == 2 * 3 * 4 * 8 * 2
  )


def conv(x, w, stride=1, groups=1):
  return jax.lax.conv_general_dilated(
    x,
    w,
    (stride, stride),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
  )


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 4)])
def test_convolution_forward_and_backward(stride, groups):
  x = jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 8 // groups, 12), jnp.float32)
  out = 16 // stride
  forward = 2 * 2 * out * out * 12 * 3 * 3 * (8 // groups)
  assert _flops.model_flops(lambda x, w: conv(x, w, stride, groups), x, w) == forward
  # Input and kernel gradients are each one convolution of the same multiply-add count (the
  # strided one's input gradient runs on a dilated input, whose inserted zeros do not count).
  grad = jax.grad(lambda x, w: jnp.sum(conv(x, w, stride, groups)), argnums=(0, 1))
  assert _flops.model_flops(grad, x, w) == 3 * forward


def test_loops_count_every_trip_and_cond_its_largest_branch():
  a = jax.ShapeDtypeStruct((4, 4), jnp.float32)

  def looped(a):
    return jax.lax.fori_loop(0, 5, lambda i, x: x @ a, a)

  assert _flops.model_flops(looped, a) == 5 * 2 * 4**3

  def branchy(a):
    return jax.lax.cond(a[0, 0] > 0, lambda x: x @ x @ x, lambda x: x + 1.0, a)

  assert _flops.model_flops(branchy, a) == 2 * 2 * 4**3

  def unbounded(a):
    return jax.lax.while_loop(lambda x: x[0, 0] < 10.0, lambda x: x @ a, a)

  with pytest.raises(ValueError, match="while loop"):
    _flops.model_flops(unbounded, a)


def test_shard_map_counts_every_shard():
  devices = np.array(jax.devices()[:1])
  mesh = jax.sharding.Mesh(devices, ("data",))
  fn = jax.shard_map(lambda x: x @ x.T, mesh=mesh, in_specs=P("data"), out_specs=P("data"))
  x = jax.ShapeDtypeStruct((8, 3), jnp.float32)
  # One device: the shard is the whole array.
  assert _flops.model_flops(fn, x) == 2 * 8 * 3 * 8


def test_step_floor_arithmetic():
  """The image-text step's floors from the parts the benchmark measures: 100 GFLOP at a
  200 GFLOP/s peak is 0.5 s; with 20 of them in early stages whose bytes take 0.3 s, 0.7 s."""
  from benchmarks.bench_train_step import itm_floor

  parts = {"itm_gflop": 100.0, "early_gflop": 20.0, "early_bandwidth_floor_s": 0.3}
  floors = itm_floor({**parts, "itm_step_s": 1.4}, 200e9 / jax.device_count())
  assert floors["itm_compute_floor_s"] == pytest.approx(0.5)
  assert floors["itm_floor_s"] == pytest.approx(0.7)
  assert floors["itm_floor_mfu_pct"] == pytest.approx(100.0 * 0.5 / 0.7)
  assert floors["itm_share_of_floor_pct"] == pytest.approx(50.0)
  # Early stages whose bytes move faster than their FLOPs run: bound by the peak instead.
  floors = itm_floor(
    {**parts, "early_bandwidth_floor_s": 0.01, "itm_step_s": 1.0}, 200e9 / jax.device_count()
  )
  assert floors["itm_floor_s"] == pytest.approx(0.5) == floors["itm_compute_floor_s"]
