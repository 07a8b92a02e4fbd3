"""Tests of jimte.models.conv_lowering: the pieced kernel gradient is the plain conv's, in pieces
that take the same images from every device's share of the batch. (On 8 sharded devices:
tests/test_parallel.py, `pieced_conv_grads`.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jimte.models import build_model, conv_lowering, small_model_config


def test_pieces_are_the_fewest_whose_images_fit_the_budget():
  pieces = conv_lowering.kernel_grad_pieces
  assert pieces(32, 1, 10, 0) == 1  # off
  assert pieces(32, 1, 10, 320) == 1  # the whole batch fits
  assert pieces(32, 1, 10, 319) == 2
  assert pieces(32, 1, 10, 80) == 4
  assert pieces(32, 1, 10, 79) == 8
  assert pieces(32, 1, 10, 5) == 32  # one image is over the budget: one per piece
  assert pieces(24, 1, 10, 70) == 4  # 6 images of 24 (a divisor), not 7
  assert pieces(32, 8, 10, 20) == 2  # 4 images per device, 2 per piece
  assert pieces(32, 8, 10, 40) == 1
  assert pieces(30, 8, 10, 20) == 1  # the batch does not split over the shards: never cut


@pytest.mark.parametrize(
  "kernel,stride,pieces", [(3, 1, 2), (3, 2, 3), (1, 2, 6), (7, 4, 2), (3, 1, 1)]
)
def test_pieced_kernel_gradient_equals_the_plain_conv(kernel, stride, pieces):
  x = jax.random.normal(jax.random.key(0), (6, 17, 17, 3))
  weights = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 4))
  pad = kernel // 2

  def loss(fn):
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w)) * jnp.arange(4.0))

  plain = loss(lambda x, w: conv_lowering.conv(x, w, stride, pad))
  pieced = loss(lambda x, w: conv_lowering.conv_pieced_kernel_grad(x, w, stride, pad, pieces))
  reference = jax.lax.conv_general_dilated(
    x, weights, (stride, stride), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_array_equal(
    conv_lowering.conv_pieced_kernel_grad(x, weights, stride, pad, pieces), reference
  )
  want = jax.grad(plain, argnums=(0, 1))(x, weights)
  got = jax.grad(pieced, argnums=(0, 1))(x, weights)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)  # strided: in phases
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)
  assert float(jnp.abs(want[1]).max()) > 1.0


@pytest.mark.parametrize("kernel,stride", [(1, 2), (3, 2), (7, 4), (3, 4), (1, 4), (3, 1)])
@pytest.mark.parametrize("size", [15, 16, 17])
def test_conv_in_phases_and_its_transpose_equal_the_strided_conv(kernel, stride, size):
  """The phases' stride-1 convs give the strided conv and, transposed, its input gradient."""
  x = jax.random.normal(jax.random.key(0), (2, size, size + 3, 3))
  weights = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 5))
  pad = kernel // 2
  want = conv_lowering.conv(x, weights, stride, pad)
  got = conv_lowering.conv_in_phases(x, weights, stride, pad)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  grad = jax.random.normal(jax.random.key(2), want.shape)
  (want_x,) = jax.linear_transpose(lambda i: conv_lowering.conv(i, weights, stride, pad), x)(grad)
  (got_x,) = jax.linear_transpose(
    lambda i: conv_lowering.conv_in_phases(i, weights, stride, pad), x
  )(grad)
  np.testing.assert_allclose(got_x, want_x, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(want_x).max()) > 1.0


def test_pieced_kernel_gradient_in_bfloat16_is_accumulated_in_float32():
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 4)).astype(jnp.bfloat16)
  weights = jax.random.normal(jax.random.key(1), (3, 3, 4, 4)).astype(jnp.bfloat16)
  exact = jax.grad(lambda w: jnp.sum(conv_lowering.conv(x.astype(jnp.float32), w, 1, 1)))(
    weights.astype(jnp.float32)
  )
  got = jax.grad(lambda w: jnp.sum(conv_lowering.conv_pieced_kernel_grad(x, w, 1, 1, 4)))(weights)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), exact, rtol=2e-2, atol=0.5)


def test_image_tower_with_pieced_kernel_gradients_has_the_same_params_outputs_and_gradients():
  """The knob changes the order of the kernel gradients' sums only: same parameter tree and
  values, the same outputs and batch statistics, gradients equal to float32 rounding."""
  config = small_model_config()
  config.embed_dim = 8
  config.image.widths = (4, 8, 8)
  config.image.stem_width = 4
  config.image.blocks_per_stage = 1
  config.image.attention_stages = ()
  config.image.region_stage = -2
  config.text.vocab_size = 40
  images = jax.random.normal(jax.random.key(0), (8, 64, 64, 1))

  def run(budget_mb):
    config.image.conv_kernel_grad_mb = budget_mb
    tower = build_model(config).image
    variables = tower.init(jax.random.key(1), images[:1], train=False)

    def loss(params):
      out, stats = tower.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        images,
        train=True,
        mutable=["batch_stats"],
      )
      return jnp.sum(jnp.sin(out.regions)) + jnp.sum(out.global_emb**2), (out, stats)

    (value, (out, stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return variables, value, out, stats, grads

  # 64 px: the stem reads 16 KB and writes 16 KB per image; 0.01 MB cuts every conv into pieces.
  plain, pieced = run(0.0), run(0.01)
  for a, b in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(pieced[0]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(plain[0]) == jax.tree.structure(pieced[0])
  np.testing.assert_array_equal(plain[2].regions, pieced[2].regions)
  for a, b in zip(jax.tree.leaves(plain[3]), jax.tree.leaves(pieced[3]), strict=True):
    np.testing.assert_array_equal(a, b)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(plain[4]), jax.tree.leaves(pieced[4]), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_pieced_backward_counts_the_same_flops_as_the_plain_one():
  """The backward traces no forward conv again (a vjp would: dead code XLA drops, but the
  benchmarks' FLOP count, and so their MFU, would include it), and no zero taps."""
  from benchmarks import _flops

  x = jax.ShapeDtypeStruct((8, 32, 32, 4), jnp.float32)
  weights = jax.ShapeDtypeStruct((3, 3, 4, 6), jnp.float32)

  def grad_flops(fn):
    return _flops.model_flops(jax.grad(lambda x, w: jnp.sum(fn(x, w)), argnums=(0, 1)), x, weights)

  plain = grad_flops(lambda x, w: conv_lowering.conv(x, w, 2, 1))
  pieced = grad_flops(lambda x, w: conv_lowering.conv_pieced_kernel_grad(x, w, 2, 1, 4))
  assert plain == 3 * 2 * 8 * 16 * 16 * 3 * 3 * 4 * 6  # forward, input and kernel gradients
  # The input gradient in phases also counts the products with the zero border of each phase's
  # transposed conv (2.8% here, at 32 x 32; less on larger maps); a forward traced again: +33%.
  assert plain <= pieced <= 1.03 * plain


def test_negative_budget_is_the_cpu_default_on_cpu_and_off_elsewhere(monkeypatch):
  from jimte.models import image

  tower = image.JoImTeRNetResNet(embed_dim=8, conv_kernel_grad_mb=-1.0)
  assert tower._kernel_grad_budget_bytes() == int(image.CPU_KERNEL_GRAD_MB * 1e6)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert tower._kernel_grad_budget_bytes() == 0
  assert image.JoImTeRNetResNet(
    embed_dim=8, conv_kernel_grad_mb=2.5
  )._kernel_grad_budget_bytes() == (2_500_000)
