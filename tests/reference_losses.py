"""A dense reference of the JoImTeRNet objectives written straight from docs/losses.md: the oracle.

Every (image, text) pair is materialised at once and nothing is clever; no code is shared with
`jimte.losses`, so the tests compare two independent readings of the contract. Also here: the
contract's reference draw and reference values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------------------
# The contract's reference draw and values ("Reference values", float64).
# --------------------------------------------------------------------------------------------------

REFERENCE_VALUES = {
  "sentence_ce": (2.8842771698, 2.8854806277),
  "word_ce": (7.9002227067, 5.2867211324),
  "sentence_triplet": (0.4279937008, 0.4781976946),
}

# The word triplet (i2t, t2i) on the same draw, by `word_triplet_length`: the 1.042 (own)
# vs 0.738 (anchor, the original's quirk). The contract lists no word-triplet values; these are
# float64 values of this dense reference, checked against the objective by tests/test_losses.py.
WORD_TRIPLET_VALUES = {
  "own": (1.0421752370, 0.6767861245),
  "anchor": (0.7383180564, 0.6767861245),
}


def reference_inputs() -> dict[str, np.ndarray]:
  """The draw of losses.md: numpy.random.default_rng(0), in the documented order (float64)."""
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


# --------------------------------------------------------------------------------------------------
# The formulas.
# --------------------------------------------------------------------------------------------------


def cosine(x, y):
  """cos [A, B] of every row of x [A, D] with every row of y [B, D]: x.y / max(|x| |y|, 1e-8)."""
  norms = jnp.linalg.norm(x, axis=-1)[:, None] * jnp.linalg.norm(y, axis=-1)[None, :]
  return (x @ y.T) / jnp.maximum(norms, 1e-8)


def word_attention(regions, words, mask, gamma1=4.0):
  """alpha [b, k, r] of matched pairs (image b with text b): the two softmaxes of losses.md."""
  p = jnp.einsum("brd,bkd->brk", regions, words)
  valid = mask[:, None, :]
  q = jnp.where(valid, jax.nn.softmax(jnp.where(valid, p, -jnp.inf), axis=-1), 0.0)
  return jnp.swapaxes(jax.nn.softmax(gamma1 * q, axis=1), 1, 2)


def word_scores(regions, words, mask, gamma1=4.0, gamma2=5.0):
  """Z [a, b] = log sum over valid k of exp(gamma2 * cos(E_b[k], c_k(a, b))), every pair at once."""
  p = jnp.einsum("ard,bkd->abrk", regions, words)  # P[r, k] of every pair (a, b)
  valid = mask[None, :, None, :]
  q = jnp.where(valid, jax.nn.softmax(jnp.where(valid, p, -jnp.inf), axis=-1), 0.0)  # over words
  alpha = jax.nn.softmax(gamma1 * q, axis=2)  # over regions r
  context = jnp.einsum("abrk,ard->abkd", alpha, regions)  # c_k
  dots = jnp.sum(context * words[None], axis=-1)
  norms = jnp.linalg.norm(context, axis=-1) * jnp.linalg.norm(words, axis=-1)[None]
  cos = dots / jnp.maximum(norms, 1e-8)
  return jax.nn.logsumexp(jnp.where(mask[None], gamma2 * cos, -jnp.inf), axis=-1)


def _other_pairs_of_a_study(study_ids):
  """Bool [B, B]: a != b of the same study (masked to -inf before the CE, skipped as negatives)."""
  study_ids = jnp.asarray(study_ids)
  return (study_ids[:, None] == study_ids[None, :]) & ~jnp.eye(study_ids.shape[0], dtype=bool)


def cross_entropies(logits, study_ids=None):
  """(i2t, t2i): mean CE of each row against its diagonal target, and of each column."""
  if study_ids is not None:
    logits = jnp.where(_other_pairs_of_a_study(study_ids), -jnp.inf, logits)
  i2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  t2i = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  return i2t, t2i


def sentence_triplets(g, s, neg_txt, neg_img, margin=0.5):
  """(i2t, t2i) with d = 1 - cos: relu(d(g_i, s_i) - d(g_i, s_n(i)) + m), and likewise for s_i."""
  d = lambda x, y: (
    1.0
    - jnp.sum(x * y, -1)
    / jnp.maximum(jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(y, axis=-1), 1e-8)
  )
  i2t = jnp.mean(jax.nn.relu(d(g, s) - d(g, s[neg_txt]) + margin))
  t2i = jnp.mean(jax.nn.relu(d(s, g) - d(s, g[neg_img]) + margin))
  return i2t, t2i


def anchor_length_negative_scores(regions, words, mask, neg_txt, gamma1=4.0, gamma2=5.0):
  """[B]: Z of image i against the words of text n(i) under text i's mask (the original's quirk:
  the first n_i words of the negative, whatever its own length)."""
  return jnp.diagonal(word_scores(regions, words[neg_txt], mask, gamma1, gamma2))


def word_triplets(z, neg_txt, neg_img, margin=0.5, negative_text_scores=None):
  """(i2t, t2i): relu(Z(i, n(i)) - Z(i, i) + m) and relu(Z(n(i), i) - Z(i, i) + m), on Z.

  `negative_text_scores` [B], when given, replaces Z(i, n(i)) in i2t (the anchor-length quirk).
  """
  i = jnp.arange(z.shape[0])
  negative = z[i, neg_txt] if negative_text_scores is None else negative_text_scores
  i2t = jnp.mean(jax.nn.relu(negative - z[i, i] + margin))
  t2i = jnp.mean(jax.nn.relu(z[neg_img, i] - z[i, i] + margin))
  return i2t, t2i


def hardest(sim, study_ids=None):
  """VSE++ (neg_txt, neg_img): the most similar other text of each image and image of each text."""
  skip = jnp.eye(sim.shape[0], dtype=bool)
  if study_ids is not None:
    skip = skip | _other_pairs_of_a_study(study_ids)
  sim = jnp.where(skip, -jnp.inf, jax.lax.stop_gradient(sim))
  return jnp.argmax(sim, axis=1), jnp.argmax(sim, axis=0)


def contract_weight(name: str) -> float:
  """The default weight of losses.md: 1.0 on the four CE terms, 2.0 on the four triplets."""
  return 2.0 if "triplet" in name else 1.0


def itm_loss(
  img_emb,
  txt_emb,
  regions,
  words,
  mask,
  neg_idx,
  *,
  weights=None,
  gamma1=4.0,
  gamma2=5.0,
  gamma3=10.0,
  sentence_margin=0.5,
  word_margin=0.5,
  study_ids=None,
  word_triplet_length="own",
):
  """(L_ITM, terms) on one dense batch, straight from the contract; weight-0 terms are left out.

  `weights` by term name over the contract's defaults. `neg_idx`: one [B] array shared by all
  triplets, a pair (negative text per image, negative image per text), or 'hardest' (each level
  mined from its own scores). Inputs of switched-off levels may be None. `word_triplet_length`
  'anchor' scores each image's negative text with the anchor's word mask (the original's code).
  """
  weights = dict(weights or {})
  weight = lambda name: float(weights.get(name, contract_weight(name)))
  on = lambda *names: any(weight(name) != 0.0 for name in names)
  if isinstance(neg_idx, str):
    negatives = None
  elif isinstance(neg_idx, (tuple, list)):
    negatives = tuple(neg_idx)
  else:
    negatives = (neg_idx, neg_idx)

  terms = {}
  for level, margin in (("sentence", sentence_margin), ("word", word_margin)):
    ce_on = on(f"{level}_ce_i2t", f"{level}_ce_t2i")
    triplet_on = on(f"{level}_triplet_i2t", f"{level}_triplet_t2i")
    if not (ce_on or triplet_on):
      continue
    if level == "sentence":
      scores = cosine(img_emb, txt_emb)  # M_s without gamma3
    else:
      scores = word_scores(regions, words, mask, gamma1, gamma2)  # Z
    if ce_on:
      ce = cross_entropies(gamma3 * scores, study_ids)
      terms.update({f"{level}_ce_i2t": ce[0], f"{level}_ce_t2i": ce[1]})
    if triplet_on:
      neg = negatives if negatives is not None else hardest(scores, study_ids)
      if level == "sentence":
        triplets = sentence_triplets(img_emb, txt_emb, *neg, margin)
      else:
        quirk = None
        if word_triplet_length == "anchor":
          quirk = anchor_length_negative_scores(regions, words, mask, neg[0], gamma1, gamma2)
        triplets = word_triplets(scores, *neg, margin, quirk)
      terms.update({f"{level}_triplet_i2t": triplets[0], f"{level}_triplet_t2i": triplets[1]})
  terms = {name: value for name, value in terms.items() if weight(name) != 0.0}
  total = sum(weight(name) * value for name, value in terms.items())
  return total, terms
