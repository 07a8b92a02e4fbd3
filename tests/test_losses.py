"""Tests of jimte.losses against the reference values of design/losses.md and a dense reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jimte import losses

# ----------------------------------------------------------------------------------------------
# Inputs and an independent dense implementation written from the math
# ----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def true_float32_matmuls():
  """Full-precision float32 products: these tests check the math, and GPUs default to TF32."""
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture
def x64():
  """Run one test with 64-bit floats, restoring the previous setting afterwards."""
  with jax.enable_x64(True):
    yield


def reference_inputs():
  """The draw of losses.md: numpy.random.default_rng(0), in the documented order."""
  rng = np.random.default_rng(0)
  regions_chw = rng.standard_normal((6, 32, 4, 4))
  img_emb = rng.standard_normal((6, 32))
  words_dt = rng.standard_normal((6, 32, 12))
  txt_emb = rng.standard_normal((6, 32))
  n_valid = rng.integers(2, 13, size=6)
  ids = np.arange(6)
  neg = np.array([rng.choice(ids[ids != x]) for x in range(6)])
  regions = regions_chw.reshape(6, 32, 16).transpose(0, 2, 1)  # [B, R, D], R row-major over H, W
  words = words_dt.transpose(0, 2, 1)  # [B, T, D]
  mask = np.arange(12)[None, :] < n_valid[:, None]
  return dict(img_emb=img_emb, txt_emb=txt_emb, regions=regions, words=words, mask=mask, neg=neg)


REFERENCE = {
  "sentence_ce": (2.8842771698, 2.8854806277),
  "word_ce": (7.9002227067, 5.2867211324),
  "sentence_triplet": (0.4279937008, 0.4781976946),
}


def dense_scores(regions, words, mask, gamma1=4.0, gamma2=5.0):
  """Z [a, b] with every pair materialised at once: the formulas of losses.md, nothing clever."""
  p = jnp.einsum("ard,bkd->abrk", regions, words)
  valid = mask[None, :, None, :]
  q = jnp.where(valid, jax.nn.softmax(jnp.where(valid, p, -jnp.inf), axis=-1), 0.0)
  alpha = jax.nn.softmax(gamma1 * q, axis=2)  # over regions r
  context = jnp.einsum("abrk,ard->abkd", alpha, regions)
  dots = jnp.sum(context * words[None], axis=-1)
  norms = jnp.linalg.norm(context, axis=-1) * jnp.linalg.norm(words, axis=-1)[None]
  cos = dots / jnp.maximum(norms, 1e-8)
  return jax.nn.logsumexp(jnp.where(mask[None], gamma2 * cos, -jnp.inf), axis=-1)


def dense_alpha(regions, words, mask, gamma1=4.0):
  """alpha [b, k, r] of matched pairs from the dense reference formulas."""
  p = jnp.einsum("brd,bkd->brk", regions, words)
  valid = mask[:, None, :]
  q = jnp.where(valid, jax.nn.softmax(jnp.where(valid, p, -jnp.inf), axis=-1), 0.0)
  return jnp.swapaxes(jax.nn.softmax(gamma1 * q, axis=1), 1, 2)


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


# ----------------------------------------------------------------------------------------------
# Reference values of losses.md
# ----------------------------------------------------------------------------------------------


def _reference_terms(d, dtype):
  """The three reference pairs of losses.md computed by the public functions in `dtype`."""
  cast = lambda x: jnp.asarray(x, dtype)
  sentence_ce = losses.global_ce_loss(cast(d["img_emb"]), cast(d["txt_emb"]))
  word_ce = losses.local_ce_loss(
    cast(d["regions"]), cast(d["words"]), jnp.asarray(d["mask"]), text_block=4
  )
  triplet = losses.sentence_triplet_loss(
    cast(d["img_emb"]), cast(d["txt_emb"]), jnp.asarray(d["neg"])
  )
  return {"sentence_ce": sentence_ce, "word_ce": word_ce, "sentence_triplet": triplet}


def test_reference_values_float64(x64):
  d = reference_inputs()
  assert d["neg"].tolist() == [2, 3, 1, 4, 2, 0]
  for name, got in _reference_terms(d, jnp.float64).items():
    assert got[0].dtype == jnp.float64
    np.testing.assert_allclose(np.array(got), REFERENCE[name], rtol=1e-9, err_msg=name)


def test_reference_values_float32():
  d = reference_inputs()
  for name, got in _reference_terms(d, jnp.float32).items():
    assert got[0].dtype == jnp.float32
    np.testing.assert_allclose(np.array(got), REFERENCE[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("method", ["gram", "direct"])
def test_reference_word_ce_both_context_methods(x64, method):
  d = reference_inputs()
  scores = losses.region_word_scores(d["regions"], d["words"], d["mask"], context_method=method)
  word_ce = losses.ce_from_scores(10.0 * scores)
  np.testing.assert_allclose(np.array(word_ce), REFERENCE["word_ce"], rtol=1e-9)


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
  dense = lambda r, w: dense_scores(r, w, mask)
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
  dense = lambda r, w: dense_scores(r, w, mask, gamma1, gamma2)
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
    f64 = dense_scores(regions.astype(np.float64), words.astype(np.float64), mask)
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
  loss = lambda r, w: sum(losses.local_ce_loss(r, w, mask, text_block=3))
  value, grads = jax.jit(jax.value_and_grad(loss, (0, 1)))(regions, words)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert np.all(np.asarray(grads[1])[2] == 0)


def test_gradients_finite_with_large_features():
  regions, words, mask = random_problem(9, n_img=4, n_txt=4, dim=64, scale=30.0)
  regions[1] = 0.0  # a blank image: zero context, cosine denominators clamped at eps
  loss = lambda r, w: sum(losses.local_ce_loss(r, w, mask))
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
    loss = lambda r, w: sum(losses.local_ce_loss(r, w, mask, text_block=text_block))
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
  np.testing.assert_allclose(pair_scores, np.diag(dense_scores(regions, words, mask)), rtol=1e-12)
  alpha = np.asarray(losses.word_region_attention(regions, words, mask))
  assert alpha.shape == (5, 9, 6)
  np.testing.assert_allclose(
    alpha[mask], np.asarray(dense_alpha(regions, words, mask))[mask], rtol=1e-12
  )
  np.testing.assert_allclose(alpha[mask].sum(-1), 1.0, rtol=1e-12)
  assert np.all(alpha[~mask] == 0)


def test_shape_errors():
  regions, words, mask = random_problem(12)
  with pytest.raises(ValueError):
    losses.region_word_scores(regions.reshape(5, 2, 3, 8), words, mask)
  with pytest.raises(ValueError):
    losses.region_word_scores(regions, words, mask[:, :-1])
  with pytest.raises(ValueError):
    losses.region_word_scores(regions, words, mask, context_method="fast")


# ----------------------------------------------------------------------------------------------
# Cross-entropy with same-study masking
# ----------------------------------------------------------------------------------------------


def _masked_ce_loop(logits, study_ids):
  """CE of each row/column with same-study off-diagonal candidates removed, one at a time."""
  n = logits.shape[0]
  keep = lambda a, b: a == b or study_ids[a] != study_ids[b]
  lse = lambda v: np.log(np.sum(np.exp(v - v.max()))) + v.max()
  row = lambda a: np.array([logits[a, b] for b in range(n) if keep(a, b)])
  column = lambda b: np.array([logits[a, b] for a in range(n) if keep(a, b)])
  i2t = np.mean([lse(row(a)) - logits[a, a] for a in range(n)])
  t2i = np.mean([lse(column(b)) - logits[b, b] for b in range(n)])
  return i2t, t2i


def test_ce_from_scores_with_and_without_study_ids():
  logits = np.random.default_rng(13).standard_normal((5, 5)) * 3
  study_ids = np.array([7, 7, 1, 2, 2])
  np.testing.assert_allclose(
    losses.ce_from_scores(jnp.asarray(logits, jnp.float32)),
    _masked_ce_loop(logits, np.arange(5)),
    rtol=1e-5,
  )
  got = losses.ce_from_scores(jnp.asarray(logits, jnp.float32), jnp.asarray(study_ids))
  np.testing.assert_allclose(got, _masked_ce_loop(logits, study_ids), rtol=1e-5)
  loss = lambda x: sum(losses.ce_from_scores(x, jnp.asarray(study_ids)))
  grad = jax.grad(loss)(jnp.asarray(logits, jnp.float32))
  assert np.all(np.isfinite(grad))
  assert grad[0, 1] == 0 and grad[4, 3] == 0  # masked pairs get no gradient
  assert grad[0, 2] != 0


def test_global_ce_loss_study_ids_change_the_loss():
  d = reference_inputs()
  img, txt = d["img_emb"].astype(np.float32), d["txt_emb"].astype(np.float32)
  plain = losses.global_ce_loss(img, txt)
  masked = losses.global_ce_loss(img, txt, study_ids=jnp.array([0, 0, 1, 2, 3, 4]))
  assert masked[0] < plain[0] and masked[1] < plain[1]  # fewer competitors, lower CE


# ----------------------------------------------------------------------------------------------
# Negatives and triplets
# ----------------------------------------------------------------------------------------------


def test_sample_negatives_never_self_and_uniform():
  keys = jax.random.split(jax.random.PRNGKey(0), 3000)
  draws = np.asarray(jax.vmap(lambda k: losses.sample_negatives(k, 4))(keys))
  assert draws.dtype == np.int32 and draws.shape == (3000, 4)
  assert np.all(draws != np.arange(4))
  for i in range(4):
    counts = np.bincount(draws[:, i], minlength=4)[np.arange(4) != i]
    assert np.all(np.abs(counts - 1000) < 4 * np.sqrt(3000 * (1 / 3) * (2 / 3))), counts
  with pytest.raises(ValueError):
    losses.sample_negatives(jax.random.PRNGKey(0), 1)


def test_hardest_negatives_skip_diagonal_and_same_study():
  sim = jnp.array(
    [[9.0, 1.0, 3.0, 2.0], [5.0, 9.0, 0.0, 4.0], [0.0, 8.0, 9.0, 1.0], [6.0, 2.0, 7.0, 9.0]]
  )
  neg_txt, neg_img = losses.hardest_negatives(sim)
  assert neg_txt.tolist() == [2, 0, 1, 2] and neg_img.tolist() == [3, 2, 3, 1]
  neg_txt, neg_img = losses.hardest_negatives(sim, study_ids=jnp.array([0, 1, 1, 2]))
  assert neg_txt.tolist() == [2, 0, 3, 2] and neg_img.tolist() == [3, 3, 3, 1]


def test_sentence_triplet_with_pair_of_negatives():
  rng = np.random.default_rng(14)
  g, s = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
  neg_txt, neg_img = np.array([1, 2, 3, 4, 0]), np.array([4, 0, 0, 1, 2])
  cos = lambda x, y: x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
  i2t = np.mean(
    [max(0, (1 - cos(g[i], s[i])) - (1 - cos(g[i], s[neg_txt[i]])) + 0.3) for i in range(5)]
  )
  t2i = np.mean(
    [max(0, (1 - cos(s[i], g[i])) - (1 - cos(s[i], g[neg_img[i]])) + 0.3) for i in range(5)]
  )
  g32, s32 = jnp.asarray(g, jnp.float32), jnp.asarray(s, jnp.float32)
  got = losses.sentence_triplet_loss(g32, s32, (neg_txt, neg_img), 0.3)
  np.testing.assert_allclose(got, (i2t, t2i), rtol=1e-5)
  assert i2t > 0 and t2i > 0


def test_word_triplet_plain_and_hardest():
  scores = jnp.array([[2.0, 1.8, 0.0], [0.5, 1.0, 0.2], [3.0, -1.0, 1.0]])
  i2t, t2i = losses.word_triplet_loss(scores, jnp.array([1, 2, 0]), margin=0.5)
  np.testing.assert_allclose(
    i2t, np.mean([max(0, 1.8 - 2 + 0.5), max(0, 0.2 - 1 + 0.5), max(0, 3 - 1 + 0.5)])
  )
  np.testing.assert_allclose(
    t2i, np.mean([max(0, 0.5 - 2 + 0.5), max(0, -1 - 1 + 0.5), max(0, 0 - 1 + 0.5)])
  )
  hard = losses.hardest_negatives(scores)
  i2t, t2i = losses.word_triplet_loss(scores, hard, margin=0.5)
  np.testing.assert_allclose(i2t, np.mean([0.3, 0.0, 2.5]))  # rows: max off-diagonal 1.8, 0.5, 3.0
  np.testing.assert_allclose(t2i, np.mean([1.5, 1.3, 0.0]))  # columns: 3.0, 1.8, 0.2


# ----------------------------------------------------------------------------------------------
# Masked language modelling
# ----------------------------------------------------------------------------------------------


def test_mlm_loss_and_accuracy():
  logits = jnp.array([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]], [[0.0, 0.0, 1.0], [5.0, 0.0, 0.0]]])
  targets = jnp.array([[0, 2], [2, 1]])
  weights = jnp.array([[1.0, 1.0], [0.0, 1.0]])
  nll = lambda row, t: np.log(np.sum(np.exp(row))) - row[t]
  selected = [(np.array([2.0, 0, 0]), 0), (np.array([0, 3.0, 0]), 2), (np.array([5.0, 0, 0]), 1)]
  expected = np.mean([nll(row, t) for row, t in selected])
  loss, accuracy = losses.mlm_loss(logits, targets, weights)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(accuracy, 1 / 3, rtol=1e-6)
  loss, accuracy = losses.mlm_loss(logits.astype(jnp.bfloat16), targets, jnp.zeros((2, 2)))
  assert loss == 0 and accuracy == 0 and loss.dtype == jnp.float32


# ----------------------------------------------------------------------------------------------
# The full ITM objective
# ----------------------------------------------------------------------------------------------


def _itm_inputs():
  """The losses.md reference draw as float32 jax arrays."""
  d = reference_inputs()
  as_jax = lambda v: jnp.asarray(v, jnp.float32) if v.dtype == np.float64 else jnp.asarray(v)
  return {k: as_jax(v) for k, v in d.items()}


def test_itm_loss_default_weights_and_reference_terms():
  d = _itm_inputs()
  total, terms = losses.itm_loss(
    d["img_emb"], d["txt_emb"], d["regions"], d["words"], d["mask"], d["neg"]
  )
  assert tuple(terms) == losses.TERM_NAMES
  for name in ("sentence_ce", "word_ce", "sentence_triplet"):
    got = [terms[f"{name}_i2t"], terms[f"{name}_t2i"]]
    np.testing.assert_allclose(got, REFERENCE[name], rtol=1e-5, err_msg=name)
  scores = losses.region_word_scores(d["regions"], d["words"], d["mask"])
  word_triplet = losses.word_triplet_loss(scores, d["neg"])
  got = [terms["word_triplet_i2t"], terms["word_triplet_t2i"]]
  np.testing.assert_allclose(got, word_triplet, rtol=1e-6)
  expected = sum(losses.DEFAULT_WEIGHTS[k] * float(v) for k, v in terms.items())
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  assert (
    losses.DEFAULT_WEIGHTS["word_ce_i2t"] == 1.0
    and losses.DEFAULT_WEIGHTS["word_triplet_t2i"] == 2.0
  )


def test_itm_loss_switched_off_terms_are_skipped():
  d = _itm_inputs()
  no_words = {name: 0.0 for name in losses.TERM_NAMES if name.startswith("word")}
  total, terms = losses.itm_loss(
    d["img_emb"], d["txt_emb"], None, None, None, d["neg"], weights=no_words
  )
  assert set(terms) == {n for n in losses.TERM_NAMES if n.startswith("sentence")}
  expected = sum(losses.DEFAULT_WEIGHTS[k] * float(v) for k, v in terms.items())
  np.testing.assert_allclose(total, expected, rtol=1e-6)

  only_word_triplets = {
    name: 0.0 for name in losses.TERM_NAMES if not name.startswith("word_triplet")
  }
  call = lambda r, w: losses.itm_loss(
    None, None, r, w, d["mask"], d["neg"], weights=only_word_triplets
  )
  jaxpr = str(jax.make_jaxpr(call)(d["regions"], d["words"]))
  assert "custom_vjp" not in jaxpr and "scan" not in jaxpr  # the all-pairs Z was never built
  total, terms = call(d["regions"], d["words"])
  assert set(terms) == {"word_triplet_i2t", "word_triplet_t2i"}
  full = losses.word_triplet_loss(
    losses.region_word_scores(d["regions"], d["words"], d["mask"]), d["neg"]
  )
  np.testing.assert_allclose(
    [terms["word_triplet_i2t"], terms["word_triplet_t2i"]], full, rtol=1e-5
  )
  np.testing.assert_allclose(total, 2.0 * (full[0] + full[1]), rtol=1e-5)

  with pytest.raises(ValueError):
    losses.itm_loss(
      d["img_emb"], d["txt_emb"], None, None, None, d["neg"], weights={"word_ce": 1.0}
    )
  with pytest.raises(ValueError):
    losses.itm_loss(
      d["img_emb"], d["txt_emb"], None, None, None, d["neg"]
    )  # word terms need regions


def test_itm_loss_hardest_negatives_and_gradients():
  d = _itm_inputs()
  args = (d["img_emb"], d["txt_emb"], d["regions"], d["words"], d["mask"])
  study_ids = jnp.array([0, 1, 1, 2, 3, 4])
  total, terms = losses.itm_loss(*args, "hardest", study_ids=study_ids, text_block=4)
  cos = losses.cosine_matrix(d["img_emb"], d["txt_emb"])
  scores = losses.region_word_scores(d["regions"], d["words"], d["mask"])
  np.testing.assert_allclose(
    [terms["sentence_triplet_i2t"], terms["sentence_triplet_t2i"]],
    losses.sentence_triplet_loss(
      d["img_emb"], d["txt_emb"], losses.hardest_negatives(cos, study_ids)
    ),
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    [terms["word_triplet_i2t"], terms["word_triplet_t2i"]],
    losses.word_triplet_loss(scores, losses.hardest_negatives(scores, study_ids)),
    rtol=1e-5,
  )
  loss = lambda *a: losses.itm_loss(*a, d["neg"], study_ids=study_ids)[0]
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in grads)


def test_zero_embeddings_and_blank_images_keep_gradients_finite():
  d = _itm_inputs()
  img = d["img_emb"].at[1].set(0.0)
  regions = d["regions"].at[2].set(0.0)
  for weights in (
    None,
    {name: 0.0 for name in losses.TERM_NAMES if not name.startswith("word_triplet")},
  ):
    loss = lambda i, t, r, w, weights=weights: losses.itm_loss(
      i, t, r, w, d["mask"], d["neg"], weights=weights
    )[0]
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(img, d["txt_emb"], regions, d["words"])
    assert all(np.all(np.isfinite(g)) for g in grads)
