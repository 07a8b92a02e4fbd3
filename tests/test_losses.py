"""Tests of jimte.losses against the contract (docs/losses.md): its reference values and a dense
reference written from its math (tests/reference_losses.py), on one device.

The region-word kernel is tested in tests/test_region_word.py, the objective over several devices in
tests/test_parallel.py.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jimte import losses, sharding
from launch import multiprocess
from tests import reference_losses as ref
from tests.reference_losses import REFERENCE_VALUES, reference_inputs

pytestmark = pytest.mark.usefixtures("true_float32_matmuls")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def one_device_objective(**kwargs):
  """`losses.itm_objective` on a mesh of one device: the single-device computation, jitted as the
  trainer runs it (string arguments, "hardest" negatives, static; op by op it is ~10x slower)."""
  mesh = sharding.make_mesh(dict(axes=(("data", -1),)), devices=jax.devices()[:1])
  objective = losses.itm_objective(mesh, **kwargs)

  def jitted(*args, **kwargs):
    static = tuple(i for i, a in enumerate(args) if isinstance(a, str))
    return jax.jit(objective, static_argnums=static)(*args, **kwargs)

  return jitted


# ----------------------------------------------------------------------------------------------
# Reference values of losses.md
# ----------------------------------------------------------------------------------------------


def _reference_terms(d, dtype):
  """The three reference pairs of losses.md from the objective on one device, in `dtype`."""
  cast = lambda x: jnp.asarray(x, dtype)
  objective = one_device_objective(text_block=4)
  _, terms = objective(
    cast(d["img_emb"]),
    cast(d["txt_emb"]),
    cast(d["regions"]),
    cast(d["words"]),
    jnp.asarray(d["mask"]),
    jnp.asarray(d["neg"]),
  )
  return {name: (terms[f"{name}_i2t"], terms[f"{name}_t2i"]) for name in REFERENCE_VALUES}


def test_reference_values_float64(x64):
  d = reference_inputs()
  assert d["neg"].tolist() == [2, 3, 1, 4, 2, 0]
  for name, got in _reference_terms(d, jnp.float64).items():
    assert got[0].dtype == jnp.float64
    np.testing.assert_allclose(np.array(got), REFERENCE_VALUES[name], rtol=1e-9, err_msg=name)


def test_reference_values_float32():
  d = reference_inputs()
  for name, got in _reference_terms(d, jnp.float32).items():
    assert got[0].dtype == jnp.float32
    np.testing.assert_allclose(np.array(got), REFERENCE_VALUES[name], rtol=1e-5, err_msg=name)


def test_dense_reference_reproduces_the_reference_values(x64):
  """The test oracle itself agrees with the contract's numbers."""
  d = reference_inputs()
  _, terms = ref.itm_loss(d["img_emb"], d["txt_emb"], d["regions"], d["words"], d["mask"], d["neg"])
  for name, want in REFERENCE_VALUES.items():
    got = (terms[f"{name}_i2t"], terms[f"{name}_t2i"])
    np.testing.assert_allclose(np.array(got), want, rtol=1e-9, err_msg=name)


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


def test_sentence_ce_study_ids_change_the_loss():
  d = reference_inputs()
  img, txt = jnp.asarray(d["img_emb"], jnp.float32), jnp.asarray(d["txt_emb"], jnp.float32)
  sentence_ce = {
    name: 0.0 for name in losses.TERM_NAMES if name not in ("sentence_ce_i2t", "sentence_ce_t2i")
  }
  objective = one_device_objective(weights=sentence_ce)
  _, plain = objective(img, txt, None, None, None)
  _, masked = objective(img, txt, None, None, None, study_ids=jnp.array([0, 0, 1, 2, 3, 4]))
  for name in ("sentence_ce_i2t", "sentence_ce_t2i"):  # fewer competitors, lower CE
    assert masked[name] < plain[name]


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


def test_sample_negatives_single_shard():
  neg = np.asarray(losses.sample_negatives(jax.random.key(3), 10))
  assert neg.shape == (10,) and neg.dtype == np.int32
  assert np.all(neg != np.arange(10)) and np.all((neg >= 0) & (neg < 10))
  with pytest.raises(ValueError, match="does not split"):
    losses.sample_negatives(jax.random.key(3), 10, 4)


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
  triplets = ("sentence_triplet_i2t", "sentence_triplet_t2i")
  only_triplets = {name: 0.0 for name in losses.TERM_NAMES if name not in triplets}
  objective = one_device_objective(weights=only_triplets, sentence_margin=0.3)
  _, terms = objective(g32, s32, None, None, None, (neg_txt, neg_img))
  np.testing.assert_allclose([terms[name] for name in triplets], (i2t, t2i), rtol=1e-5)
  assert i2t > 0 and t2i > 0


def test_word_triplet_plain_and_hardest():
  scores = jnp.array([[2.0, 1.8, 0.0], [0.5, 1.0, 0.2], [3.0, -1.0, 1.0]])
  diagonal = jnp.arange(3)
  triplets = lambda neg_txt, neg_img: (
    jnp.mean(losses.triplet(scores, diagonal, neg_txt, 0.5, axis=1)),
    jnp.mean(losses.triplet(scores, diagonal, neg_img, 0.5, axis=0)),
  )
  neg = jnp.array([1, 2, 0])
  i2t, t2i = triplets(neg, neg)
  np.testing.assert_allclose(
    i2t, np.mean([max(0, 1.8 - 2 + 0.5), max(0, 0.2 - 1 + 0.5), max(0, 3 - 1 + 0.5)])
  )
  np.testing.assert_allclose(
    t2i, np.mean([max(0, 0.5 - 2 + 0.5), max(0, -1 - 1 + 0.5), max(0, 0 - 1 + 0.5)])
  )
  i2t, t2i = triplets(*losses.hardest_negatives(scores))
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
# The term table and the full ITM objective on one device
# ----------------------------------------------------------------------------------------------


def test_term_table_follows_the_contract():
  assert tuple(term.name for term in losses.TERMS) == losses.TERM_NAMES
  assert len(set(losses.TERM_NAMES)) == 8
  assert dict(losses.DEFAULT_WEIGHTS) == {n: ref.contract_weight(n) for n in losses.TERM_NAMES}
  assert set(losses.SENTENCE_TERMS) | set(losses.WORD_TERMS) == set(losses.TERM_NAMES)
  assert all(name.startswith("sentence_") for name in losses.SENTENCE_TERMS)
  assert losses.term_names("word", "ce") == ("word_ce_i2t", "word_ce_t2i")
  assert losses.resolve_weights({"word_ce_i2t": 0}) == dict(losses.DEFAULT_WEIGHTS, word_ce_i2t=0.0)
  with pytest.raises(ValueError, match="unknown ITM terms"):
    losses.resolve_weights({"word_ce": 1.0})


def _itm_inputs():
  """The losses.md reference draw as float32 jax arrays."""
  d = reference_inputs()
  as_jax = lambda v: jnp.asarray(v, jnp.float32) if v.dtype == np.float64 else jnp.asarray(v)
  return {k: as_jax(v) for k, v in d.items()}


def test_objective_default_weights_and_reference_terms():
  d = _itm_inputs()
  args = (d["img_emb"], d["txt_emb"], d["regions"], d["words"], d["mask"], d["neg"])
  total, terms = one_device_objective()(*args)
  assert sorted(terms) == sorted(losses.TERM_NAMES)  # every term, once (a jitted dict is sorted)
  for name in ("sentence_ce", "word_ce", "sentence_triplet"):
    got = [terms[f"{name}_i2t"], terms[f"{name}_t2i"]]
    np.testing.assert_allclose(got, REFERENCE_VALUES[name], rtol=1e-5, err_msg=name)
  _, want = ref.itm_loss(*args)
  got = [terms["word_triplet_i2t"], terms["word_triplet_t2i"]]
  np.testing.assert_allclose(got, [want["word_triplet_i2t"], want["word_triplet_t2i"]], rtol=1e-5)
  expected = sum(losses.DEFAULT_WEIGHTS[k] * float(v) for k, v in terms.items())
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  assert (
    losses.DEFAULT_WEIGHTS["word_ce_i2t"] == 1.0
    and losses.DEFAULT_WEIGHTS["word_triplet_t2i"] == 2.0
  )


def test_objective_switched_off_terms_are_skipped():
  d = _itm_inputs()
  no_words = dict.fromkeys(losses.WORD_TERMS, 0.0)
  total, terms = one_device_objective(weights=no_words)(
    d["img_emb"], d["txt_emb"], None, None, None, d["neg"]
  )
  assert set(terms) == set(losses.SENTENCE_TERMS)
  expected = sum(losses.DEFAULT_WEIGHTS[k] * float(v) for k, v in terms.items())
  np.testing.assert_allclose(total, expected, rtol=1e-6)

  only_word_triplets = {
    name: 0.0 for name in losses.TERM_NAMES if not name.startswith("word_triplet")
  }
  objective = one_device_objective(weights=only_word_triplets)
  total, terms = objective(None, None, d["regions"], d["words"], d["mask"], d["neg"])
  assert set(terms) == {"word_triplet_i2t", "word_triplet_t2i"}
  _, full = ref.itm_loss(
    None, None, d["regions"], d["words"], d["mask"], d["neg"], weights=only_word_triplets
  )
  full = [full["word_triplet_i2t"], full["word_triplet_t2i"]]
  np.testing.assert_allclose(
    [terms["word_triplet_i2t"], terms["word_triplet_t2i"]], full, rtol=1e-5
  )
  np.testing.assert_allclose(total, 2.0 * (full[0] + full[1]), rtol=1e-5)

  with pytest.raises(ValueError):
    one_device_objective(weights={"word_ce": 1.0})
  with pytest.raises(ValueError):
    one_device_objective()(
      d["img_emb"], d["txt_emb"], None, None, None, d["neg"]
    )  # word terms need regions


def test_objective_hardest_negatives_and_gradients():
  d = _itm_inputs()
  args = (d["img_emb"], d["txt_emb"], d["regions"], d["words"], d["mask"])
  study_ids = jnp.array([0, 1, 1, 2, 3, 4])
  total, terms = one_device_objective(text_block=4)(*args, "hardest", study_ids)
  _, want = ref.itm_loss(*args, "hardest", study_ids=study_ids)
  np.testing.assert_allclose(
    [terms["sentence_triplet_i2t"], terms["sentence_triplet_t2i"]],
    [want["sentence_triplet_i2t"], want["sentence_triplet_t2i"]],
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    [terms["word_triplet_i2t"], terms["word_triplet_t2i"]],
    [want["word_triplet_i2t"], want["word_triplet_t2i"]],
    rtol=1e-5,
  )
  objective = one_device_objective()
  loss = lambda *a: objective(*a, d["neg"], study_ids)[0]
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
    objective = one_device_objective(weights=weights)
    loss = lambda i, t, r, w, objective=objective: objective(i, t, r, w, d["mask"], d["neg"])[0]
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(img, d["txt_emb"], regions, d["words"])
    assert all(np.all(np.isfinite(g)) for g in grads)


# ----------------------------------------------------------------------------------------------
# The word triplet's length switch: the negative's own word count, or the anchor's (the original)
# ----------------------------------------------------------------------------------------------

_ARGS = ("img_emb", "txt_emb", "regions", "words", "mask", "neg")


@pytest.mark.parametrize("length", ["own", "anchor"])
@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-9), (jnp.float32, 1e-5)])
def test_word_triplet_length_reference_values(x64, length, dtype, rtol):
  """On the contract's draw: own 1.0422 / 0.6768, anchor (the original's code) 0.7383 / 0.6768."""
  d = reference_inputs()
  cast = lambda v: jnp.asarray(v, dtype) if v.dtype == np.float64 else jnp.asarray(v)
  objective = one_device_objective(text_block=4, word_triplet_length=length)
  _, terms = objective(*(cast(d[k]) for k in _ARGS))
  got = (terms["word_triplet_i2t"], terms["word_triplet_t2i"])
  np.testing.assert_allclose(np.array(got), ref.WORD_TRIPLET_VALUES[length], rtol=rtol)
  _, dense = ref.itm_loss(*(d[k] for k in _ARGS), word_triplet_length=length)
  want = (dense["word_triplet_i2t"], dense["word_triplet_t2i"])
  np.testing.assert_allclose(np.array(want), ref.WORD_TRIPLET_VALUES[length], rtol=1e-9)
  # Only the word triplet's i2t term reads the switch.
  for name in REFERENCE_VALUES:
    np.testing.assert_allclose(
      np.array([terms[f"{name}_i2t"], terms[f"{name}_t2i"]]), REFERENCE_VALUES[name], rtol=rtol
    )


def test_anchor_length_reads_the_negatives_first_n_i_words():
  """The quirk by hand: image i against the first n_i word vectors of text n(i), padding too."""
  d = _itm_inputs()
  neg = d["neg"]
  objective = one_device_objective(
    weights={n: (1.0 if n == "word_triplet_i2t" else 0.0) for n in losses.TERM_NAMES},
    word_triplet_length="anchor",
  )
  _, terms = objective(None, None, d["regions"], d["words"], d["mask"], neg)
  z = losses.region_word_scores(d["regions"], d["words"], d["mask"])
  by_hand = []
  for i in range(6):
    n_i = int(d["mask"][i].sum())
    words = d["words"][neg[i], :n_i][None]
    z_neg = losses.region_word_scores(d["regions"][i : i + 1], words, jnp.ones((1, n_i), bool))
    by_hand.append(max(0.0, float(z_neg[0, 0]) - float(z[i, i]) + 0.5))
  np.testing.assert_allclose(float(terms["word_triplet_i2t"]), np.mean(by_hand), rtol=1e-5)
  assert any(int(d["mask"][i].sum()) > int(d["mask"][neg[i]].sum()) for i in range(6))  # padding


def test_anchor_length_hardest_negatives_and_gradients_match_the_dense_reference():
  d = _itm_inputs()
  args = (d["img_emb"], d["txt_emb"], d["regions"], d["words"], d["mask"])
  study = jnp.array([0, 1, 1, 2, 3, 4])
  for neg in (d["neg"], "hardest"):
    objective = one_device_objective(word_triplet_length="anchor")

    def value_and_grads(fn, neg=neg):
      loss = lambda *a: fn(*a, d["mask"], neg, study)
      # Jitted: op by op the two gradients took 80 s.
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(*args[:4])

    (total, terms), grads = value_and_grads(objective)
    dense = lambda *a: ref.itm_loss(*a[:6], study_ids=a[6], word_triplet_length="anchor")
    (want_total, want), want_grads = value_and_grads(dense)
    np.testing.assert_allclose(float(total), float(want_total), rtol=1e-5)
    for name in losses.TERM_NAMES:
      np.testing.assert_allclose(float(terms[name]), float(want[name]), rtol=1e-5, err_msg=name)
    for g, w in zip(grads, want_grads, strict=True):
      np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_word_triplet_length_rejects_unknown_values():
  with pytest.raises(ValueError, match="word_triplet_length"):
    one_device_objective(word_triplet_length="negative")


def eight_device_word_triplet_length_checks() -> dict:
  """Run in a subprocess with 8 simulated devices: the anchor-length word triplet sharded vs the
  dense reference (global modes) or its per-shard means (device mode); relative errors."""
  from tests import _parallel_checks as pc

  assert jax.device_count() == 8, jax.device_count()
  hyper = dict(pc.HYPER, word_triplet_length="anchor")
  x = pc.make_inputs(seed=3)
  pc_args = ("img_emb", "txt_emb", "regions", "words", "word_mask")
  out = {}
  cases = {  # the ring fetch over 8 devices; on the device itself in 'device' mode
    "global_data8": (pc.mesh_of(("data", -1), ("fsdp", 1)), "global"),
    "device_data8": (pc.mesh_of(("data", -1), ("fsdp", 1)), "device"),
  }
  with jax.default_matmul_precision("highest"):
    for name, (mesh, local_pairs) in cases.items():
      d = sharding.num_batch_shards(mesh)
      neg = losses.sample_negatives(jax.random.key(7), pc.N, d if local_pairs == "device" else 1)
      sharded = losses.itm_objective(mesh, local_pairs=local_pairs, **hyper)
      if local_pairs == "device":
        reference = _device_mode_reference(d, hyper)
      else:
        reference = lambda *a: ref.itm_loss(*a[:6], study_ids=a[6], **hyper)
      total, terms, grads = pc.value_and_grads(sharded, x, neg, x["study_ids"])
      want_total, want_terms, want_grads = pc.value_and_grads(reference, x, neg, x["study_ids"])
      _, own = ref.itm_loss(*(x[k] for k in pc_args), neg, study_ids=x["study_ids"], **pc.HYPER)
      out[name] = dict(
        total_rel=pc.rel(total, want_total),
        terms_rel=pc.scalar_rel(terms, want_terms),
        grads_rel=pc.rel(grads, want_grads),
        word_triplet_i2t=float(terms["word_triplet_i2t"]),
        own_word_triplet_i2t=float(own["word_triplet_i2t"]),
      )
  return out


def _device_mode_reference(d, hyper):
  """local_pairs='device' from the dense reference: sentence terms over the batch, each word term
  the mean over shards of the reference on that shard (shard-local negatives)."""
  sentence = {
    k: (v if k in losses.SENTENCE_TERMS else 0.0) for k, v in losses.DEFAULT_WEIGHTS.items()
  }
  word = {k: (v if k in losses.WORD_TERMS else 0.0) for k, v in losses.DEFAULT_WEIGHTS.items()}

  def fn(img, txt, regions, words, mask, neg, study):
    n = img.shape[0] // d
    _, terms = ref.itm_loss(
      img, txt, None, None, None, neg, study_ids=study, weights=sentence, **hyper
    )
    parts = []
    for s in range(d):
      part = slice(s * n, (s + 1) * n)
      _, t = ref.itm_loss(
        None,
        None,
        regions[part],
        words[part],
        mask[part],
        neg[part] - s * n,
        study_ids=study[part],
        weights=word,
        **hyper,
      )
      parts.append(t)
    terms.update({k: sum(t[k] for t in parts) / d for k in parts[0]})
    terms = {k: terms[k] for k in losses.TERM_NAMES}
    return sum(losses.DEFAULT_WEIGHTS[k] * v for k, v in terms.items()), terms

  return fn


def test_anchor_length_sharded_over_8_devices_equals_single_device():
  env = multiprocess.process_env(8)
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  code = (
    "import json; from tests import test_losses as t; "
    "print(json.dumps(t.eight_device_word_triplet_length_checks()))"
  )
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
  )
  assert done.returncode == 0, done.stderr[-6000:]
  results = json.loads(done.stdout.strip().splitlines()[-1])
  for name in ("global_data8", "device_data8"):
    r = results[name]
    assert r["total_rel"] < 1e-5 and r["terms_rel"] < 1e-5 and r["grads_rel"] < 1e-5, (name, r)
  r = results["global_data8"]  # the switch matters on these inputs
  assert abs(r["word_triplet_i2t"] - r["own_word_triplet_i2t"]) > 1e-2, r
