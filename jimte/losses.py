"""JoImTeRNet objectives as pure JAX functions of the two towers' embeddings.

The math is the contract written in `design/losses.md`: every score matrix has rows = images and
columns = texts; cosines divide by `max(|x| |y|, 1e-8)`; the word score Z(a, b) is the log-sum-exp
of `gamma2 * cos(word, attended context)` over the valid words of text b (no `1 / gamma2`).

The expensive part is Z for every (image, text) pair. `region_word_scores` computes it in
blocks of texts with a hand-written backward pass that recomputes each block, so memory stays
linear in the batch while every heavy contraction is one large GEMM. Nothing here knows about
devices or sharding; `jimte.parallel` composes these functions over a global batch.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Lower bound on the product of norms in every cosine (as in the original code).
COSINE_EPS = 1e-8

# Z of a text without a single valid word. log of an empty sum would be -inf (and NaN in the CE);
# this finite stand-in loses every comparison, yields zero gradient to the features, and cannot
# overflow after `gamma3` scaling. Tokenized reports always keep [EOS], so it only guards edge
# cases.
EMPTY_TEXT_SCORE = -1.0e4

# The eight ITM terms, in the order they are reported.
TERM_NAMES = (
  "sentence_ce_i2t",
  "sentence_ce_t2i",
  "word_ce_i2t",
  "word_ce_t2i",
  "sentence_triplet_i2t",
  "sentence_triplet_t2i",
  "word_triplet_i2t",
  "word_triplet_t2i",
)

# Weights of the original JoImTeRNet: 1.0 on the cross-entropy terms, 2.0 on the triplets.
DEFAULT_WEIGHTS: Mapping[str, float] = types.MappingProxyType(
  {name: (2.0 if "triplet" in name else 1.0) for name in TERM_NAMES}
)

# Elements of one [images, regions, texts, words] block tensor that the automatic block size aims
# for, per backend. CPU: 16 MiB in float32, big enough for full-speed GEMMs and close to the
# caches. Accelerators: 256 MiB, since wider blocks keep a GPU busy (measured on an H100: B=128
# runs 1.8x faster with 8 texts per block than with 1) and a handful of such tensors fits in HBM.
_BLOCK_ELEMENT_BUDGET = {"cpu": 1 << 22}
_ACCELERATOR_BLOCK_ELEMENT_BUDGET = 1 << 26

# Below this gamma1 the region softmax needs no max-shift: exp(gamma1 * Q) <= exp(gamma1), Q in [0,
# 1].
_UNSHIFTED_REGION_SOFTMAX_MAX_GAMMA = 30.0

Negatives = Array | tuple[Array, Array]
ContextMethod = Literal["auto", "gram", "direct"]


# ----------------------------------------------------------------------------------------------
# Small shared pieces
# ----------------------------------------------------------------------------------------------


def _stats_dtype(*dtypes) -> jnp.dtype:
  """Dtype of softmaxes, cosines and log-sum-exps: float32, or float64 when inputs are float64."""
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def _norm(x: Array, axis: int = -1) -> Array:
  """Euclidean norm along `axis` whose gradient at a zero vector is 0 rather than NaN."""
  sq_norm = jnp.sum(x * x, axis=axis)
  positive = sq_norm > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq_norm, 1.0)), 0.0)


def cosine_matrix(x: Array, y: Array) -> Array:
  """All-pairs cosine [A, B] of x [A, D] and y [B, D], with `max(|x||y|, 1e-8)` below."""
  dtype = _stats_dtype(x.dtype, y.dtype)
  x = x.astype(dtype)
  y = y.astype(dtype)
  dots = x @ y.T
  norm_products = _norm(x)[:, None] * _norm(y)[None, :]
  return dots / jnp.maximum(norm_products, COSINE_EPS)


def _rowwise_cosine(x: Array, y: Array) -> Array:
  """Cosine of matching rows of x [N, D] and y [N, D] -> [N]."""
  dtype = _stats_dtype(x.dtype, y.dtype)
  x = x.astype(dtype)
  y = y.astype(dtype)
  norm_products = _norm(x) * _norm(y)
  return jnp.sum(x * y, axis=-1) / jnp.maximum(norm_products, COSINE_EPS)


def _same_study_off_diagonal(study_ids: Array) -> Array:
  """Bool [B, B]: True where a != b but both belong to the same study."""
  same = study_ids[:, None] == study_ids[None, :]
  return same & ~jnp.eye(study_ids.shape[0], dtype=bool)


def _masked_softmax(x: Array, mask: Array, axis: int) -> Array:
  """Softmax along `axis` over entries where `mask`; masked entries get exactly 0.

  An all-masked slice gives all zeros rather than NaN. `jnp.where` (never multiplication)
  keeps inf/garbage in masked entries out of values and gradients.
  """
  x = jnp.where(mask, x, -jnp.inf)
  x_max = jnp.max(x, axis=axis, keepdims=True)
  x_max = jnp.where(jnp.isfinite(x_max), x_max, 0.0)
  e = jnp.exp(x - x_max)
  total = jnp.sum(e, axis=axis, keepdims=True)
  return e * jnp.reciprocal(jnp.where(total > 0, total, 1.0))


def _region_softmax(q: Array, gamma1: float, axis: int) -> Array:
  """softmax(gamma1 * q) along the region axis, for q = the word-softmax output in [0, 1]."""
  logits = gamma1 * q
  static_small = (
    isinstance(gamma1, (int, float)) and 0 <= gamma1 <= _UNSHIFTED_REGION_SOFTMAX_MAX_GAMMA
  )
  if not static_small:  # exp could overflow: shift by the max (the result is the same softmax)
    logits = logits - jnp.max(logits, axis=axis, keepdims=True)
  e = jnp.exp(logits)
  return e * jnp.reciprocal(jnp.sum(e, axis=axis, keepdims=True))


def _masked_logsumexp(x: Array, mask: Array, axis: int) -> Array:
  """log sum exp over the valid entries along `axis`; EMPTY_TEXT_SCORE where none is valid."""
  mask = jnp.broadcast_to(mask, x.shape)
  x = jnp.where(mask, x, -jnp.inf)
  x_max = jnp.max(x, axis=axis)
  any_valid = jnp.any(mask, axis=axis)
  x_max = jnp.where(any_valid, x_max, 0.0)
  total = jnp.sum(jnp.exp(x - jnp.expand_dims(x_max, axis)), axis=axis)
  lse = x_max + jnp.log(jnp.where(any_valid, total, 1.0))
  return jnp.where(any_valid, lse, jnp.asarray(EMPTY_TEXT_SCORE, x.dtype))


def _check_region_word_shapes(regions: Array, words: Array, word_mask: Array) -> None:
  if regions.ndim != 3 or words.ndim != 3:
    raise ValueError(
      f"regions must be [B_img, R, D] and words [B_txt, T, D]; got {regions.shape} and "
      f"{words.shape} (flatten an [B, H, W, D] grid row-major first)"
    )
  if regions.shape[-1] != words.shape[-1]:
    raise ValueError(f"feature sizes differ: regions {regions.shape}, words {words.shape}")
  if word_mask.shape != words.shape[:2]:
    raise ValueError(f"word_mask {word_mask.shape} must be words.shape[:2] = {words.shape[:2]}")
  if not (
    jnp.issubdtype(regions.dtype, jnp.floating) and jnp.issubdtype(words.dtype, jnp.floating)
  ):
    raise TypeError(f"regions and words must be floating, got {regions.dtype}, {words.dtype}")


# ----------------------------------------------------------------------------------------------
# Region-word attention and the word score Z: one block of texts against all local images
# ----------------------------------------------------------------------------------------------
#
# Layout of every big block tensor: [images a, regions r, texts b, words k]. It is what the GEMM
# P = V_flat [a*r, D] @ E_flat^T [D, b*k] produces, so no transpose is ever materialised; the word
# softmax reduces the minor axis, the region softmax axis 1.
#
# The norm of the context c_k = sum_r alpha[k, r] V[r] is needed, never c itself, since
# e_k . c_k = sum_r alpha[k, r] P[r, k]. Two ways to get |c_k|^2:
#   "gram":   |c_k|^2 = alpha_k^T G alpha_k with G = V V^T [R, R] per image (H = G alpha is an
#             R x R x (b*k) GEMM); cheaper whenever R is below about 4/3 D (e.g. 16x16 grid, D=512).
#   "direct": C = alpha^T V [(b*k), D] per image, |c_k|^2 = |C_k|^2; for large grids (R > 4/3 D).
# FLOPs per (image, text) pair, forward + backward with recomputation:
#   gram 8RTD + 6TR^2, direct 16RTD (autodiff with jax.checkpoint of the direct form: 16RTD).


class _BlockIntermediates(NamedTuple):
  """Everything the backward pass of one block needs, recomputed from the inputs."""

  p: Array  # [a, r, b, k] region.word dot products
  q: Array  # [a, r, b, k] softmax over words k
  alpha: Array  # [a, r, b, k] softmax over regions r of gamma1 * q
  h: Array | None  # [a, r, b*k] G @ alpha (gram method)
  context: Array | None  # [a, b*k, D] alpha^T @ V (direct method)
  ctx_sq_norm: Array  # [a, b, k] |c_k|^2
  ctx_norm: Array  # [a, b, k] |c_k|
  norm_product: Array  # [a, b, k] |e_k| |c_k|
  denominator: Array  # [a, b, k] max(|e_k| |c_k|, eps)
  cos: Array  # [a, b, k]
  logits: Array  # [a, b, k] gamma2 * cos
  scores: Array  # [a, b] Z


def _block_intermediates(
  regions: Array,
  gram: Array | None,
  words: Array,
  word_mask: Array,
  word_norms: Array,
  gamma1: float,
  gamma2: float,
  use_gram: bool,
) -> _BlockIntermediates:
  """Forward pass of one block: regions [a, R, D] (+ gram [a, R, R]) against words [b, T, D]."""
  n_img, n_reg, dim = regions.shape
  n_txt, n_words, _ = words.shape
  n_cols = n_txt * n_words
  stats = _stats_dtype(regions.dtype, words.dtype)

  p = lax.dot_general(
    regions.reshape(n_img * n_reg, dim),
    words.reshape(n_cols, dim),
    (((1,), (1,)), ((), ())),
    preferred_element_type=stats,
  ).reshape(n_img, n_reg, n_txt, n_words)
  q = _masked_softmax(p, word_mask[None, None], axis=-1)
  alpha = _region_softmax(q, gamma1, axis=1)
  alpha_flat = alpha.reshape(n_img, n_reg, n_cols)

  if use_gram:
    h = lax.dot_general(
      gram, alpha_flat, (((2,), (1,)), ((0,), (0,))), preferred_element_type=stats
    )
    ctx_sq_norm = jnp.sum(h * alpha_flat, axis=1)
    context = None
  else:
    context = lax.dot_general(
      alpha_flat, regions.astype(stats), (((1,), (1,)), ((0,), (0,))), preferred_element_type=stats
    )
    ctx_sq_norm = jnp.sum(context * context, axis=-1)
    h = None
  ctx_sq_norm = jnp.maximum(ctx_sq_norm, 0.0).reshape(n_img, n_txt, n_words)  # rounding can dip < 0
  word_dot_ctx = jnp.sum(alpha * p, axis=1)  # e_k . c_k, [a, b, k]

  ctx_norm = jnp.sqrt(ctx_sq_norm)
  norm_product = word_norms[None] * ctx_norm
  denominator = jnp.maximum(norm_product, COSINE_EPS)
  cos = word_dot_ctx / denominator
  logits = gamma2 * cos
  scores = _masked_logsumexp(logits, word_mask[None], axis=-1)
  return _BlockIntermediates(
    p, q, alpha, h, context, ctx_sq_norm, ctx_norm, norm_product, denominator, cos, logits, scores
  )


def _block_backward(
  regions: Array,
  gram: Array | None,
  words: Array,
  word_mask: Array,
  word_norms: Array,
  score_cotangent: Array,
  gamma1: float,
  gamma2: float,
  use_gram: bool,
):
  """Cotangents of one block: recompute its forward, then push dZ [a, b] back by hand.

  Returns (d_regions [a, R, D], d_gram [a, R, R] or None, d_words [b, T, D]), in the stats dtype;
  the gram cotangent is turned into a regions cotangent once, after all blocks.
  """
  n_img, n_reg, dim = regions.shape
  n_txt, n_words, _ = words.shape
  n_cols = n_txt * n_words
  stats = _stats_dtype(regions.dtype, words.dtype)
  it = _block_intermediates(regions, gram, words, word_mask, word_norms, gamma1, gamma2, use_gram)

  valid = word_mask[None]
  word_weights = jnp.where(valid, jnp.exp(it.logits - it.scores[..., None]), 0.0)  # dZ/dlogits
  d_cos = gamma2 * score_cotangent[..., None].astype(stats) * word_weights
  d_word_dot_ctx = d_cos / it.denominator
  d_denominator = -d_cos * it.cos / it.denominator
  unclamped = it.norm_product > COSINE_EPS
  d_word_norm = jnp.where(unclamped, d_denominator * it.ctx_norm, 0.0)
  safe_ctx_norm = jnp.where(it.ctx_norm > 0, it.ctx_norm, 1.0)
  d_ctx_sq_norm = jnp.where(
    unclamped & (it.ctx_sq_norm > 0), d_denominator * word_norms[None] / (2.0 * safe_ctx_norm), 0.0
  )

  alpha_flat = it.alpha.reshape(n_img, n_reg, n_cols)
  if use_gram:
    h = it.h
  else:
    h = lax.dot_general(
      regions.astype(stats), it.context, (((2,), (2,)), ((0,), (0,))), preferred_element_type=stats
    )
  per_word = lambda t: t[:, None]  # [a, b, k] -> [a, 1, b, k], broadcast over regions
  d_alpha = per_word(d_word_dot_ctx) * it.p + per_word(2.0 * d_ctx_sq_norm) * h.reshape(it.p.shape)
  d_q = gamma1 * it.alpha * (d_alpha - jnp.sum(it.alpha * d_alpha, axis=1, keepdims=True))
  d_p = (
    it.q * (d_q - jnp.sum(it.q * d_q, axis=-1, keepdims=True)) + per_word(d_word_dot_ctx) * it.alpha
  )

  d_p_flat = d_p.astype(regions.dtype).reshape(
    n_img * n_reg, n_cols
  )  # bf16 GEMM operand under bf16
  d_regions = lax.dot_general(
    d_p_flat, words.reshape(n_cols, dim), (((1,), (0,)), ((), ())), preferred_element_type=stats
  ).reshape(n_img, n_reg, dim)
  d_words = lax.dot_general(
    d_p_flat,
    regions.reshape(n_img * n_reg, dim),
    (((0,), (0,)), ((), ())),
    preferred_element_type=stats,
  ).reshape(n_txt, n_words, dim)
  safe_word_norms = jnp.where(word_norms > 0, word_norms, 1.0)
  d_words = d_words + (jnp.sum(d_word_norm, axis=0) / safe_word_norms)[..., None] * words.astype(
    stats
  )

  weighted_alpha = alpha_flat * d_ctx_sq_norm.reshape(n_img, 1, n_cols)
  if use_gram:
    d_gram = lax.dot_general(
      weighted_alpha, alpha_flat, (((2,), (2,)), ((0,), (0,))), preferred_element_type=stats
    )
  else:
    d_gram = None
    d_regions = d_regions + 2.0 * lax.dot_general(
      weighted_alpha, it.context, (((2,), (1,)), ((0,), (0,))), preferred_element_type=stats
    )
  return d_regions, d_gram, d_words


def _word_norms(words: Array) -> Array:
  """|e_k| [..., T] in the stats dtype."""
  return _norm(words.astype(_stats_dtype(words.dtype)))


def _gram(regions: Array, use_gram: bool) -> Array | None:
  """G = V V^T per image [a, R, R] in the stats dtype (None for the direct method)."""
  if not use_gram:
    return None
  return lax.dot_general(
    regions,
    regions,
    (((2,), (2,)), ((0,), (0,))),
    preferred_element_type=_stats_dtype(regions.dtype),
  )


def _blocked_scores_impl(gamma1, gamma2, use_gram, regions, word_blocks, mask_blocks, gram):
  """Forward over all blocks, one at a time (lax.map): only a block's tensors are ever live."""
  norm_blocks = _word_norms(word_blocks)

  def one_block(block):
    words, mask, norms = block
    return _block_intermediates(regions, gram, words, mask, norms, gamma1, gamma2, use_gram).scores

  return lax.map(one_block, (word_blocks, mask_blocks, norm_blocks))  # [n_blocks, a, blk]


def _blocked_scores(gamma1, gamma2, use_gram, regions, word_blocks, mask_blocks):
  """Z blocks [n_blocks, B_img, blk] for word blocks [n_blocks, blk, T, D] (inputs already
  clean)."""
  return _blocked_scores_impl(
    gamma1, gamma2, use_gram, regions, word_blocks, mask_blocks, _gram(regions, use_gram)
  )


def _blocked_scores_fwd(gamma1, gamma2, use_gram, regions, word_blocks, mask_blocks):
  """custom_vjp forward: Z blocks, saving only the inputs (and G) for the backward pass."""
  gram = _gram(regions, use_gram)
  scores = _blocked_scores_impl(gamma1, gamma2, use_gram, regions, word_blocks, mask_blocks, gram)
  return scores, (regions, gram, word_blocks, mask_blocks)  # only inputs (+ gram): linear in batch


def _blocked_scores_bwd(gamma1, gamma2, use_gram, residuals, score_cotangents):
  """custom_vjp backward: a scan over blocks, each recomputed, summing the regions' cotangents."""
  regions, gram, word_blocks, mask_blocks = residuals
  stats = _stats_dtype(regions.dtype, word_blocks.dtype)
  norm_blocks = _word_norms(word_blocks)

  def one_block(carry, block):
    words, mask, norms, cotangent = block
    d_regions, d_gram, d_words = _block_backward(
      regions, gram, words, mask, norms, cotangent, gamma1, gamma2, use_gram
    )
    carry = (carry[0] + d_regions,) + ((carry[1] + d_gram,) if use_gram else ())
    return carry, d_words

  # zeros_like keeps the inputs' varying-manual-axes type, so the scan's carry types match when this
  # runs inside shard_map (plain zeros would be device-invariant and the carry check would fail).
  init = (jnp.zeros_like(regions, dtype=stats),)
  if use_gram:
    init += (jnp.zeros_like(gram, dtype=stats),)
  blocks = (word_blocks, mask_blocks, norm_blocks, score_cotangents)
  carry, d_word_blocks = lax.scan(one_block, init, blocks)
  d_regions = carry[0]
  if use_gram:  # G = V V^T  =>  dV = (dG + dG^T) V = 2 dG V (dG is symmetric by construction)
    d_regions = d_regions + 2.0 * lax.dot_general(
      carry[1], regions.astype(stats), (((2,), (1,)), ((0,), (0,))), preferred_element_type=stats
    )
  return d_regions.astype(regions.dtype), d_word_blocks.astype(word_blocks.dtype), None


_blocked_scores = jax.custom_vjp(_blocked_scores, nondiff_argnums=(0, 1, 2))
_blocked_scores.defvjp(_blocked_scores_fwd, _blocked_scores_bwd)


def auto_text_block(
  n_images: int, n_texts: int, n_regions: int, n_words: int, backend: str | None = None
) -> int:
  """Texts per block chosen by `region_word_scores` when `text_block=None`.

  Caps each [images, regions, block, words] tensor at an element budget that depends on the
  backend (default: `jax.default_backend()`; 4M elements on CPU, 64M on accelerators), so
  temporary memory does not grow with the number of texts, and spreads texts evenly over the
  fewest blocks to keep padding small.
  """
  backend = jax.default_backend() if backend is None else backend
  budget = _BLOCK_ELEMENT_BUDGET.get(backend, _ACCELERATOR_BLOCK_ELEMENT_BUDGET)
  per_text = max(1, n_images * n_regions * n_words)
  largest = max(1, min(n_texts, budget // per_text))
  n_blocks = -(-n_texts // largest)
  return -(-n_texts // n_blocks)


def _resolve_context_method(method: str, n_regions: int, dim: int) -> bool:
  """True for the gram method. 'auto' picks the one with fewer FLOPs (gram when 3R <= 4D)."""
  if method == "auto":
    return 3 * n_regions <= 4 * dim
  if method not in ("gram", "direct"):
    raise ValueError(f"context_method must be 'auto', 'gram' or 'direct', got {method!r}")
  return method == "gram"


def region_word_scores(
  regions: Array,
  words: Array,
  word_mask: Array,
  gamma1: float = 4.0,
  gamma2: float = 5.0,
  text_block: int | None = None,
  *,
  context_method: ContextMethod = "auto",
) -> Array:
  """Word-level matching score Z [B_img, B_txt] for every (image, text) pair (losses.md).

  regions [B_img, R, D], words [B_txt, T, D], word_mask bool [B_txt, T]. Texts are processed in
  blocks of `text_block` (None: `auto_text_block`; the texts are padded internally with
  masked words). The backward pass is hand-written: it recomputes each block from its inputs, as
  `jax.checkpoint` would, so memory is linear in the batch. Forward-mode AD is not supported.

  Masked word slots have no influence on Z or on any gradient, whatever they hold (they are
  replaced by zeros through `jnp.where`). A text with no valid word scores EMPTY_TEXT_SCORE.
  Under bfloat16 inputs the feature GEMMs take bf16 operands with float32 accumulation; softmaxes,
  attention-weight products, cosines and log-sum-exps are float32. Z is float32 (float64 for
  float64 inputs). gamma1/gamma2 must be Python numbers. `context_method` picks how |c_k| is
  computed ('gram', 'direct', or 'auto' by FLOP count); both give the same Z.
  """
  _check_region_word_shapes(regions, words, word_mask)
  n_img, n_reg, dim = regions.shape
  n_txt, n_words, _ = words.shape
  gamma1, gamma2 = float(gamma1), float(gamma2)
  use_gram = _resolve_context_method(context_method, n_reg, dim)
  block = auto_text_block(n_img, n_txt, n_reg, n_words) if text_block is None else int(text_block)
  if block < 1:
    raise ValueError(f"text_block must be >= 1, got {text_block}")
  block = min(block, n_txt)

  compute = jnp.result_type(regions.dtype, words.dtype)
  regions = regions.astype(compute)
  word_mask = word_mask.astype(bool)
  words = jnp.where(word_mask[..., None], words.astype(compute), 0)
  n_blocks = -(-n_txt // block)
  pad = n_blocks * block - n_txt
  if pad:
    words = jnp.pad(words, ((0, pad), (0, 0), (0, 0)))
    word_mask = jnp.pad(word_mask, ((0, pad), (0, 0)))
  word_blocks = words.reshape(n_blocks, block, n_words, dim)
  mask_blocks = word_mask.reshape(n_blocks, block, n_words)

  score_blocks = _blocked_scores(gamma1, gamma2, use_gram, regions, word_blocks, mask_blocks)
  scores = jnp.moveaxis(score_blocks, 0, 1).reshape(n_img, n_blocks * block)
  return scores[:, :n_txt]


def pair_region_word_scores(
  regions: Array, words: Array, word_mask: Array, gamma1: float = 4.0, gamma2: float = 5.0
) -> Array:
  """Z(i, i) [B] for matched rows only (regions[i] with words[i]); same math as the full matrix.

  Costs B pairs instead of B^2: used for word triplets when no word CE needs all of Z.
  """
  _check_region_word_shapes(regions, words, word_mask)
  if regions.shape[0] != words.shape[0]:
    raise ValueError(f"paired scores need as many images as texts: {regions.shape}, {words.shape}")
  word_mask = word_mask.astype(bool)
  compute = jnp.result_type(regions.dtype, words.dtype)
  regions = regions.astype(compute)
  words = jnp.where(word_mask[..., None], words.astype(compute), 0)
  stats = _stats_dtype(compute)

  p = jnp.einsum("brd,bkd->brk", regions, words, preferred_element_type=stats)
  q = _masked_softmax(p, word_mask[:, None, :], axis=-1)
  alpha = _region_softmax(q, float(gamma1), axis=1)  # [b, r, k]
  context = jnp.einsum("brk,brd->bkd", alpha, regions.astype(stats))
  cos = jnp.sum(context * words.astype(stats), axis=-1) / jnp.maximum(
    _norm(context) * _word_norms(words), COSINE_EPS
  )
  return _masked_logsumexp(float(gamma2) * cos, word_mask, axis=-1)


def word_region_attention(
  regions: Array, words: Array, word_mask: Array, gamma1: float = 4.0
) -> Array:
  """alpha [B, T, R] of each text's words over the regions of its own image (matched pairs).

  The same two softmaxes as in Z: over valid words per region, then over regions per word. Each
  valid word's row sums to 1; rows of masked words are 0. Reshape R to the [H, W] grid to draw.
  """
  _check_region_word_shapes(regions, words, word_mask)
  if regions.shape[0] != words.shape[0]:
    raise ValueError(f"attention maps need matched pairs: {regions.shape}, {words.shape}")
  word_mask = word_mask.astype(bool)
  compute = jnp.result_type(regions.dtype, words.dtype)
  words = jnp.where(word_mask[..., None], words.astype(compute), 0)
  stats = _stats_dtype(compute)
  p = jnp.einsum("brd,bkd->brk", regions.astype(compute), words, preferred_element_type=stats)
  q = _masked_softmax(p, word_mask[:, None, :], axis=-1)
  alpha = _region_softmax(q, float(gamma1), axis=1)
  return jnp.where(word_mask[..., None], jnp.swapaxes(alpha, 1, 2), 0.0)


# ----------------------------------------------------------------------------------------------
# Cross-entropy matching losses
# ----------------------------------------------------------------------------------------------


def ce_from_scores(logits: Array, study_ids: Array | None = None) -> tuple[Array, Array]:
  """(i2t, t2i) cross-entropies of a square [B, B] logit matrix (rows images, columns texts).

  i2t averages CE(row a, target a) over rows, t2i CE(column b, target b) over columns. With
  `study_ids` [B], off-diagonal pairs of the same study are set to -inf first.
  """
  if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
    raise ValueError(f"logits must be square [B, B], got {logits.shape}")
  logits = logits.astype(_stats_dtype(logits.dtype))
  if study_ids is not None:
    logits = jnp.where(_same_study_off_diagonal(jnp.asarray(study_ids)), -jnp.inf, logits)
  i2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  t2i = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  return i2t, t2i


def global_ce_loss(
  img_emb: Array, txt_emb: Array, gamma3: float = 10.0, study_ids: Array | None = None
) -> tuple[Array, Array]:
  """Sentence-level CE (i2t, t2i) on M_s = gamma3 * cos(g_a, s_b); img_emb, txt_emb [B, D]."""
  return ce_from_scores(gamma3 * cosine_matrix(img_emb, txt_emb), study_ids)


def local_ce_loss(
  regions: Array,
  words: Array,
  word_mask: Array,
  gamma1: float = 4.0,
  gamma2: float = 5.0,
  gamma3: float = 10.0,
  study_ids: Array | None = None,
  text_block: int | None = None,
) -> tuple[Array, Array]:
  """Word-level CE (i2t, t2i) on M_w = gamma3 * Z, Z from `region_word_scores`."""
  scores = region_word_scores(regions, words, word_mask, gamma1, gamma2, text_block)
  return ce_from_scores(gamma3 * scores, study_ids)


# ----------------------------------------------------------------------------------------------
# Negatives and triplet ranking losses
# ----------------------------------------------------------------------------------------------


def sample_negatives(rng: Array, batch_size: int) -> Array:
  """int32 [B]: for each anchor i an index n(i) != i, uniform over the other B - 1 (one draw).

  The same indices serve all four triplet terms, as in the original.
  """
  if batch_size < 2:
    raise ValueError(f"negatives need a batch of at least 2, got {batch_size}")
  offsets = jax.random.randint(rng, (batch_size,), 1, batch_size, dtype=jnp.int32)
  return (jnp.arange(batch_size, dtype=jnp.int32) + offsets) % batch_size


def hardest_negatives(sim_matrix: Array, study_ids: Array | None = None) -> tuple[Array, Array]:
  """VSE++ negatives from a [B, B] similarity (rows images, columns texts).

  Returns (neg_txt_for_img, neg_img_for_txt), int32 [B] each: the most similar off-diagonal
  text of each image and image of each text, skipping same-study pairs when `study_ids` is
  given. Pass the pair as `neg_idx` to the triplet functions (or `neg_idx="hardest"` to
  `itm_loss`, which then mines each level from its own similarity).
  """
  sim = lax.stop_gradient(sim_matrix)
  excluded = jnp.eye(sim.shape[0], dtype=bool)
  if study_ids is not None:
    excluded = excluded | _same_study_off_diagonal(jnp.asarray(study_ids))
  sim = jnp.where(excluded, -jnp.inf, sim)
  return jnp.argmax(sim, axis=1).astype(jnp.int32), jnp.argmax(sim, axis=0).astype(jnp.int32)


def _split_negatives(neg_idx: Negatives) -> tuple[Array, Array]:
  """neg_idx is one [B] array (shared by both directions) or (neg_txt_for_img, neg_img_for_txt)."""
  if isinstance(neg_idx, (tuple, list)):
    if len(neg_idx) != 2:
      raise ValueError("neg_idx as a pair must be (neg_txt_for_img, neg_img_for_txt)")
    return jnp.asarray(neg_idx[0]), jnp.asarray(neg_idx[1])
  neg_idx = jnp.asarray(neg_idx)
  return neg_idx, neg_idx


def sentence_triplet_loss(
  img_emb: Array, txt_emb: Array, neg_idx: Negatives, margin: float = 0.5
) -> tuple[Array, Array]:
  """Sentence triplets (i2t, t2i) with d = 1 - cos.

  i2t = mean_i relu(d(g_i, s_i) - d(g_i, s_n(i)) + margin);
  t2i = mean_i relu(d(s_i, g_i) - d(s_i, g_n(i)) + margin).
  `neg_idx`: [B] shared negatives, or the pair (neg_txt_for_img, neg_img_for_txt).
  """
  neg_txt, neg_img = _split_negatives(neg_idx)
  positive = _rowwise_cosine(img_emb, txt_emb)
  i2t = jnp.mean(jax.nn.relu(_rowwise_cosine(img_emb, txt_emb[neg_txt]) - positive + margin))
  t2i = jnp.mean(jax.nn.relu(_rowwise_cosine(img_emb[neg_img], txt_emb) - positive + margin))
  return i2t, t2i


def _word_triplets_from_parts(positive, negative_text, negative_image, margin):
  i2t = jnp.mean(jax.nn.relu(negative_text - positive + margin))
  t2i = jnp.mean(jax.nn.relu(negative_image - positive + margin))
  return i2t, t2i


def word_triplet_loss(
  scores: Array, neg_idx: Negatives, margin: float = 0.5
) -> tuple[Array, Array]:
  """Word triplets (i2t, t2i) on a square Z matrix (no gamma3).

  i2t = mean_i relu(Z[i, n(i)] - Z[i, i] + margin)  (image i against the negative text);
  t2i = mean_i relu(Z[n(i), i] - Z[i, i] + margin)  (the negative image against text i).
  `neg_idx`: [B] shared negatives, or the pair (neg_txt_for_img, neg_img_for_txt).
  """
  if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
    raise ValueError(f"scores must be square [B, B], got {scores.shape}")
  neg_txt, neg_img = _split_negatives(neg_idx)
  rows = jnp.arange(scores.shape[0])
  positive = jnp.diagonal(scores)
  return _word_triplets_from_parts(positive, scores[rows, neg_txt], scores[neg_img, rows], margin)


# ----------------------------------------------------------------------------------------------
# Masked language modelling
# ----------------------------------------------------------------------------------------------


def mlm_loss(logits: Array, targets: Array, weights: Array) -> tuple[Array, Array]:
  """(loss, accuracy) of masked-token prediction on the weighted positions.

  logits [B, L, V], targets int [B, L], weights float [B, L] (1.0 at selected positions). loss is
  the weighted mean CE (float32 log-softmax); accuracy the weighted fraction of argmax hits. Both
  are 0 when no position is selected.
  """
  log_probs = jax.nn.log_softmax(logits.astype(_stats_dtype(logits.dtype)), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  weights = weights.astype(nll.dtype)
  selected = weights != 0
  total_weight = jnp.sum(weights)
  denominator = jnp.where(total_weight > 0, total_weight, 1.0)
  loss = jnp.sum(jnp.where(selected, nll * weights, 0.0)) / denominator
  hits = (jnp.argmax(logits, axis=-1) == targets).astype(nll.dtype)
  accuracy = jnp.sum(jnp.where(selected, hits * weights, 0.0)) / denominator
  return loss, accuracy


# ----------------------------------------------------------------------------------------------
# The full image-text matching objective
# ----------------------------------------------------------------------------------------------


def resolve_weights(weights: Mapping[str, float] | None = None) -> dict:
  """All eight term weights as floats: given values over DEFAULT_WEIGHTS; unknown names raise."""
  weights = dict(weights or {})
  unknown = set(weights) - set(TERM_NAMES)
  if unknown:
    raise ValueError(f"unknown ITM terms {sorted(unknown)}; known: {TERM_NAMES}")
  return {name: float(weights.get(name, DEFAULT_WEIGHTS[name])) for name in TERM_NAMES}


def _require(name: str, value, terms):
  """`value`, or a ValueError naming the active terms that need it when it is None."""
  if value is None:
    raise ValueError(f"{name} is needed by the active terms {sorted(terms)}")
  return value


def itm_loss(
  img_emb: Array | None,
  txt_emb: Array | None,
  regions: Array | None,
  words: Array | None,
  word_mask: Array | None,
  neg_idx: Negatives | Literal["hardest"] | None,
  *,
  weights: Mapping[str, float] | None = DEFAULT_WEIGHTS,
  gamma1: float = 4.0,
  gamma2: float = 5.0,
  gamma3: float = 10.0,
  sentence_margin: float = 0.5,
  word_margin: float = 0.5,
  study_ids: Array | None = None,
  text_block: int | None = None,
) -> tuple[Array, dict]:
  """L_ITM = sum of weight * term over the eight terms of TERM_NAMES; returns (total, terms).

  img_emb, txt_emb [B, D]; regions [B, R, D] (grid flattened row-major); words [B, T, D];
  word_mask [B, T]. `weights` (Python floats) override DEFAULT_WEIGHTS by name; a term with
  weight 0 is off: it is neither computed nor listed in `terms` (unweighted values). Z is only
  built when a word CE term is on (or word triplets mine hardest negatives); word triplets alone
  score just the 3B pairs they use. Inputs only used by inactive terms may be None.
  `neg_idx`: [B] shared negatives (`sample_negatives`), a pair (neg_txt_for_img,
  neg_img_for_txt), or "hardest" to mine VSE++ negatives at each level (same-study excluded).
  """
  weights = resolve_weights(weights)
  active = {name for name, weight in weights.items() if weight != 0.0}
  terms = {}
  need = lambda *names: any(name in active for name in names)

  sentence_ce = ("sentence_ce_i2t", "sentence_ce_t2i")
  sentence_triplet = ("sentence_triplet_i2t", "sentence_triplet_t2i")
  word_ce = ("word_ce_i2t", "word_ce_t2i")
  word_triplet = ("word_triplet_i2t", "word_triplet_t2i")
  mine_hardest = isinstance(neg_idx, str)
  if mine_hardest and neg_idx != "hardest":
    raise ValueError(f"neg_idx must be indices, a pair of indices or 'hardest', got {neg_idx!r}")
  if need(*sentence_triplet, *word_triplet) and neg_idx is None:
    raise ValueError(f"triplet terms {sorted(active)} need neg_idx")

  if need(*sentence_ce, *sentence_triplet):
    img_emb = _require("img_emb", img_emb, active)
    txt_emb = _require("txt_emb", txt_emb, active)
    cos = cosine_matrix(img_emb, txt_emb)
    if need(*sentence_ce):
      terms.update(zip(sentence_ce, ce_from_scores(gamma3 * cos, study_ids), strict=True))
    if need(*sentence_triplet):
      negatives = hardest_negatives(cos, study_ids) if mine_hardest else neg_idx
      triplets = sentence_triplet_loss(img_emb, txt_emb, negatives, sentence_margin)
      terms.update(zip(sentence_triplet, triplets, strict=True))

  if need(*word_ce, *word_triplet):
    regions = _require("regions", regions, active)
    words = _require("words", words, active)
    word_mask = _require("word_mask", word_mask, active)
    if need(*word_ce) or mine_hardest:
      scores = region_word_scores(regions, words, word_mask, gamma1, gamma2, text_block)
      if need(*word_ce):
        terms.update(zip(word_ce, ce_from_scores(gamma3 * scores, study_ids), strict=True))
      if need(*word_triplet):
        negatives = hardest_negatives(scores, study_ids) if mine_hardest else neg_idx
        terms.update(
          zip(word_triplet, word_triplet_loss(scores, negatives, word_margin), strict=True)
        )
    else:  # only the diagonal and the negatives' scores are needed
      neg_txt, neg_img = _split_negatives(neg_idx)
      pair = lambda r, w, m: pair_region_word_scores(r, w, m, gamma1, gamma2)
      parts = (
        pair(regions, words, word_mask),
        pair(regions, words[neg_txt], word_mask[neg_txt]),
        pair(regions[neg_img], words, word_mask),
      )
      terms.update(zip(word_triplet, _word_triplets_from_parts(*parts, word_margin), strict=True))

  terms = {name: terms[name] for name in TERM_NAMES if name in active}
  total = sum((weights[name] * value for name, value in terms.items()), jnp.zeros((), jnp.float32))
  return total, terms
