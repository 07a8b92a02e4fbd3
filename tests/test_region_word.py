"""Tests of the region-word kernel (jimte/losses/region_word.py) against the dense reference of the
contract (tests/reference_losses.py): values, gradients, masking, dtypes, memory, block sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jimte import losses
from tests import reference_losses as ref
from tests.reference_losses import REFERENCE_VALUES, reference_inputs

pytestmark = pytest.mark.usefixtures("true_float32_matmuls")

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def random_problem(seed, n_img=5, n_txt=7, n_reg=6, n_words=9, dim=8, dtype=np.float32, scale=1.0):
  """Random regions [a, R, D], words [b, T, D] and a mask keeping 1..T leading words per text."""
  rng = np.random.default_rng(seed)
  regions = (scale * rng.standard_normal((n_img, n_reg, dim))).astype(dtype)
  words = (scale * rng.standard_normal((n_txt, n_words, dim))).astype(dtype)
  lengths = rng.integers(1, n_words + 1, size=n_txt)
  mask = np.arange(n_words)[None, :] < lengths[:, None]
  return regions, words, mask


def rel_err(a, b):
  """Largest absolute difference relative to the largest magnitude of the reference b."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def word_ce(regions, words, mask, **kwargs):
  """i2t + t2i of the word CE on M_w = 10 Z from the blocked kernel."""
  return sum(
    losses.ce_from_scores(10.0 * losses.region_word_scores(regions, words, mask, **kwargs))
  )


# ----------------------------------------------------------------------------------------------
# Reference values of losses.md
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gram", "direct"])
def test_reference_word_ce_both_context_methods(x64, method):
  d = reference_inputs()
  scores = losses.region_word_scores(d["regions"], d["words"], d["mask"], context_method=method)
  word_ce = losses.ce_from_scores(10.0 * scores)
  np.testing.assert_allclose(np.array(word_ce), REFERENCE_VALUES["word_ce"], rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Blocked word scores against the dense reference: values and gradients
# ----------------------------------------------------------------------------------------------


def scores_and_grads(score_fn, regions, words, cotangent):
  """(Z, (d regions, d words)) of score_fn for the cotangent dZ, in one compiled function."""

  def run(r, w):
    scores, vjp = jax.vjp(score_fn, r, w)
    return scores, vjp(jnp.asarray(cotangent, scores.dtype))

  return jax.jit(run)(regions, words)


@pytest.mark.parametrize(
  "method, text_block", [("gram", 1), ("gram", 3), ("gram", None), ("direct", 4), ("direct", 1)]
)
def test_blocked_scores_match_dense_reference(x64, method, text_block):
  """7 texts in blocks of 1, 3 (padded to 9), 4 (padded to 8) and all at once."""
  regions, words, mask = random_problem(1, dtype=np.float64)
  cotangent = np.random.default_rng(2).standard_normal((5, 7))
  blocked = lambda r, w: losses.region_word_scores(
    r, w, mask, text_block=text_block, context_method=method
  )
  got_scores, got_grads = scores_and_grads(blocked, regions, words, cotangent)
  dense = lambda r, w: ref.word_scores(r, w, mask)
  want_scores, want_grads = scores_and_grads(dense, regions, words, cotangent)
  np.testing.assert_allclose(got_scores, want_scores, rtol=1e-12, atol=1e-12)
  for got, want in zip(got_grads, want_grads, strict=True):
    assert rel_err(got, want) < 1e-10


@pytest.mark.parametrize("gamma1, gamma2", [(50.0, 2.0), (-1.5, 8.0)])
def test_blocked_scores_other_gammas(x64, gamma1, gamma2):
  """gamma1 outside [0, 30] takes the max-shifted region softmax; results stay exact."""
  regions, words, mask = random_problem(3, n_img=4, n_txt=4, dtype=np.float64, scale=2.0)
  cotangent = np.random.default_rng(4).standard_normal((4, 4))
  blocked = lambda r, w: losses.region_word_scores(r, w, mask, gamma1, gamma2, text_block=3)
  got_scores, got_grads = scores_and_grads(blocked, regions, words, cotangent)
  dense = lambda r, w: ref.word_scores(r, w, mask, gamma1, gamma2)
  want_scores, want_grads = scores_and_grads(dense, regions, words, cotangent)
  assert rel_err(got_scores, want_scores) < 1e-12
  for got, want in zip(got_grads, want_grads, strict=True):
    assert rel_err(got, want) < 1e-9


@pytest.mark.parametrize("method", ["gram", "direct"])
def test_blocked_scores_float32_close_to_float64(method):
  regions, words, mask = random_problem(4, n_img=6, n_txt=6, n_reg=16, n_words=12, dim=32)
  f32 = losses.region_word_scores(regions, words, mask, text_block=4, context_method=method)
  assert f32.dtype == jnp.float32
  with jax.enable_x64(True):
    f64 = ref.word_scores(regions.astype(np.float64), words.astype(np.float64), mask)
    assert rel_err(f32, f64) < 1e-5


def test_masked_word_slots_have_no_influence():
  regions, words, mask = random_problem(5)
  garbage = np.random.default_rng(6).standard_normal(words.shape).astype(np.float32) * 1e30
  dirty = np.where(mask[..., None], words, garbage).astype(np.float32)
  dirty[0, -1, 0] = np.inf if not mask[0, -1] else dirty[0, -1, 0]
  weights = np.random.default_rng(7).standard_normal((5, 7)).astype(np.float32)
  loss = lambda r, w: jnp.sum(weights * losses.region_word_scores(r, w, mask, text_block=3))

  value_and_grad = jax.jit(jax.value_and_grad(loss, (0, 1)))
  clean_value, clean_grads = value_and_grad(regions, words)
  dirty_value, dirty_grads = value_and_grad(regions, dirty)
  np.testing.assert_array_equal(dirty_value, clean_value)
  np.testing.assert_array_equal(dirty_grads[0], clean_grads[0])
  np.testing.assert_array_equal(dirty_grads[1], clean_grads[1])
  assert np.all(np.asarray(dirty_grads[1])[~mask] == 0)


def test_text_without_valid_words_is_finite_and_very_negative():
  regions, words, mask = random_problem(8, n_img=4, n_txt=4)
  mask[2] = False
  scores = losses.region_word_scores(regions, words, mask, text_block=3)
  np.testing.assert_array_equal(scores[:, 2], losses.EMPTY_TEXT_SCORE)
  assert np.all(np.asarray(scores[:, [0, 1, 3]]) > -100)
  loss = lambda r, w: word_ce(r, w, mask, text_block=3)
  value, grads = jax.jit(jax.value_and_grad(loss, (0, 1)))(regions, words)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert np.all(np.asarray(grads[1])[2] == 0)


def test_gradients_finite_with_large_features():
  regions, words, mask = random_problem(9, n_img=4, n_txt=4, dim=64, scale=30.0)
  regions[1] = 0.0  # a blank image: zero context, cosine denominators clamped at eps
  loss = lambda r, w: word_ce(r, w, mask)
  value, grads = jax.jit(jax.value_and_grad(loss, (0, 1)))(regions, words)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_bfloat16_inputs_give_float32_scores_close_to_float32():
  regions, words, mask = random_problem(10, n_img=4, n_txt=6, n_reg=16, dim=32)
  regions_bf, words_bf = jnp.asarray(regions, jnp.bfloat16), jnp.asarray(words, jnp.bfloat16)
  rounded = (regions_bf.astype(jnp.float32), words_bf.astype(jnp.float32))
  cotangent = np.random.default_rng(11).standard_normal((4, 6))
  score_fn = lambda r, w: losses.region_word_scores(r, w, mask, text_block=4)

  scores_bf, grads_bf = scores_and_grads(score_fn, regions_bf, words_bf, cotangent)
  scores_f32, grads_f32 = scores_and_grads(score_fn, *rounded, cotangent)
  assert scores_bf.dtype == jnp.float32
  assert rel_err(scores_bf, scores_f32) < 1e-4
  for g_bf, g_f32 in zip(grads_bf, grads_f32, strict=True):
    assert g_bf.dtype == jnp.bfloat16
    assert rel_err(g_bf, g_f32) < 3e-2


def test_blocked_grad_memory_is_small_and_linear_in_batch():
  def temp_bytes(n_batch, text_block):
    rng = np.random.default_rng(0)
    regions = jnp.asarray(rng.standard_normal((n_batch, 64, 64)), jnp.float32)
    words = jnp.asarray(rng.standard_normal((n_batch, 32, 64)), jnp.float32)
    mask = jnp.ones((n_batch, 32), bool)
    loss = lambda r, w: word_ce(r, w, mask, text_block=text_block)
    compiled = jax.jit(jax.grad(loss, (0, 1))).lower(regions, words).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  blocked, single = temp_bytes(16, 2), temp_bytes(16, 16)
  assert blocked * 4 < single, (blocked, single)
  half = temp_bytes(8, 2)
  assert blocked < 2.6 * half, (blocked, half)  # linear (2x), not quadratic (4x), in the batch


def test_auto_text_block():
  assert losses.auto_text_block(8, 8, 64, 32, "cpu") == 8  # small problem: one block
  blk = losses.auto_text_block(32, 32, 256, 159, "cpu")
  assert 1 <= blk < 32 and 32 * 256 * 159 * blk <= 2 * (1 << 22)
  assert losses.auto_text_block(128, 128, 1024, 159, "cpu") == 1
  assert losses.auto_text_block(1, 10, 1, 699050, "cpu") == 5  # room for 6 per block: 2 blocks of 5
  paper_size = (128, 128, 256, 159)
  assert losses.auto_text_block(*paper_size, "gpu") > losses.auto_text_block(*paper_size, "cpu")


def test_pair_scores_and_attention_match_dense_diagonal(x64):
  regions, words, mask = random_problem(11, n_img=5, n_txt=5, dtype=np.float64)
  pair_scores = losses.pair_region_word_scores(regions, words, mask)
  np.testing.assert_allclose(
    pair_scores, np.diag(ref.word_scores(regions, words, mask)), rtol=1e-12
  )
  alpha = np.asarray(losses.word_region_attention(regions, words, mask))
  assert alpha.shape == (5, 9, 6)
  np.testing.assert_allclose(
    alpha[mask], np.asarray(ref.word_attention(regions, words, mask))[mask], rtol=1e-12
  )
  np.testing.assert_allclose(alpha[mask].sum(-1), 1.0, rtol=1e-12)
  assert np.all(alpha[~mask] == 0)


def test_pair_scores_never_build_the_all_pairs_kernel():
  """Matched pairs cost B pairs, not B^2: no blocked custom-VJP kernel, no scan over blocks."""
  regions, words, mask = random_problem(11, n_img=5, n_txt=5)
  jaxpr = str(
    jax.make_jaxpr(lambda r, w: losses.pair_region_word_scores(r, w, mask))(regions, words)
  )
  assert "custom_vjp" not in jaxpr and "scan" not in jaxpr


def test_shape_errors():
  regions, words, mask = random_problem(12)
  with pytest.raises(ValueError):
    losses.region_word_scores(regions.reshape(5, 2, 3, 8), words, mask)
  with pytest.raises(ValueError):
    losses.region_word_scores(regions, words, mask[:, :-1])
  with pytest.raises(ValueError):
    losses.region_word_scores(regions, words, mask, context_method="fast")
