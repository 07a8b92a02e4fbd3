"""The word-level matching score Z of every (image, text) pair, and the attention behind it.

Z(a, b) is the log-sum-exp of `gamma2 * cos(word, attended context)` over the valid words of text b
(losses.md: no `1 / gamma2`). The expensive part is Z for every pair: `region_word_scores` computes
it in blocks of texts with a hand-written backward pass that recomputes each block, so memory stays
linear in the batch while every heavy contraction is one large GEMM. `pair_region_word_scores` and
`word_region_attention` do the same math for matched pairs only. Nothing here knows about devices;
`jimte.losses.objective` composes these functions over a global batch.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jimte.losses.numerics import COSINE_EPS, safe_norm, stats_dtype

Array = jax.Array

# Z of a text without a single valid word. log of an empty sum would be -inf (and NaN in the CE);
# this finite stand-in loses every comparison, yields zero gradient to the features, and cannot
# overflow after `gamma3` scaling. Tokenized reports always keep [EOS], so it only guards edge
# cases.
EMPTY_TEXT_SCORE = -1.0e4


# Elements of one [images, regions, texts, words] block tensor that the automatic block size aims
# for, per backend. CPU: 16 MiB in float32, big enough for full-speed GEMMs and close to the
# caches. Accelerators: 256 MiB, since wider blocks keep a GPU busy (measured on an H100: B=128
# runs 1.8x faster with 8 texts per block than with 1) and a handful of such tensors fits in HBM.
_BLOCK_ELEMENT_BUDGET = {"cpu": 1 << 22}
_ACCELERATOR_BLOCK_ELEMENT_BUDGET = 1 << 26

# Below this gamma1 the region softmax needs no max-shift: exp(gamma1 * Q) <= exp(gamma1), as the
# word softmax Q lies in [0, 1].
_UNSHIFTED_REGION_SOFTMAX_MAX_GAMMA = 30.0


ContextMethod = Literal["auto", "gram", "direct"]


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
  stats = stats_dtype(regions.dtype, words.dtype)

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
  stats = stats_dtype(regions.dtype, words.dtype)
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
  return safe_norm(words.astype(stats_dtype(words.dtype)))


def _gram(regions: Array, use_gram: bool) -> Array | None:
  """G = V V^T per image [a, R, R] in the stats dtype (None for the direct method)."""
  if not use_gram:
    return None
  return lax.dot_general(
    regions,
    regions,
    (((2,), (2,)), ((0,), (0,))),
    preferred_element_type=stats_dtype(regions.dtype),
  )


def _blocked_scores_impl(gamma1, gamma2, use_gram, regions, word_blocks, mask_blocks, gram):
  """Forward over all blocks, one at a time (lax.map): only a block's tensors are ever live."""
  norm_blocks = _word_norms(word_blocks)

  def one_block(block):
    words, mask, norms = block
    return _block_intermediates(regions, gram, words, mask, norms, gamma1, gamma2, use_gram).scores

  return lax.map(one_block, (word_blocks, mask_blocks, norm_blocks))  # [n_blocks, a, blk]


def _blocked_scores(gamma1, gamma2, use_gram, regions, word_blocks, mask_blocks):
  """Z blocks [n_blocks, B_img, blk] for word blocks [n_blocks, blk, T, D] (inputs clean)."""
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
  stats = stats_dtype(regions.dtype, word_blocks.dtype)
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
  stats = stats_dtype(compute)

  p = jnp.einsum("brd,bkd->brk", regions, words, preferred_element_type=stats)
  q = _masked_softmax(p, word_mask[:, None, :], axis=-1)
  alpha = _region_softmax(q, float(gamma1), axis=1)  # [b, r, k]
  context = jnp.einsum("brk,brd->bkd", alpha, regions.astype(stats))
  cos = jnp.sum(context * words.astype(stats), axis=-1) / jnp.maximum(
    safe_norm(context) * _word_norms(words), COSINE_EPS
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
  stats = stats_dtype(compute)
  p = jnp.einsum("brd,bkd->brk", regions.astype(compute), words, preferred_element_type=stats)
  q = _masked_softmax(p, word_mask[:, None, :], axis=-1)
  alpha = _region_softmax(q, float(gamma1), axis=1)
  return jnp.where(word_mask[..., None], jnp.swapaxes(alpha, 1, 2), 0.0)
