"""Image<->text retrieval: Recall@K in both directions over a held-out split, with chance level.

Scores (rows images, columns texts, as everywhere in jimte):
  global   = cos(image vector, sentence vector)                       (the sentence-level matching)
  local    = Z, the region-word matching score of losses.md          (the word-level matching)
  combined = gamma3 * (cos + Z), the sum of the two CE logits used in training
The ground-truth text of image i is text i. Ties count against the model (a constant scorer gets 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jimte import losses

SCORES = ("global", "local", "combined")  # the score kinds, in the order above


def ranks_of_diagonal(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """0-based rank of the true match for every image (row) and every text (column), ties
  pessimistic."""
  scores = np.asarray(scores, np.float64)
  diag = np.diag(scores)
  i2t = (scores >= diag[:, None]).sum(axis=1) - 1
  t2i = (scores >= diag[None, :]).sum(axis=0) - 1
  return i2t, t2i


def recall_at_k(scores: np.ndarray, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
  """{'i2t_R@K', 't2i_R@K', 'chance_R@K'} for each K, as fractions in [0, 1]."""
  n_img, n_txt = scores.shape
  if n_img != n_txt:
    raise ValueError(f"retrieval needs paired rows and columns, got scores of shape {scores.shape}")
  i2t, t2i = ranks_of_diagonal(scores)
  out = {}
  for k in ks:
    out[f"i2t_R@{k}"] = float(np.mean(i2t < k))
    out[f"t2i_R@{k}"] = float(np.mean(t2i < k))
    out[f"chance_R@{k}"] = min(k, n_txt) / n_txt
  out["i2t_median_rank"] = float(np.median(i2t) + 1)
  out["t2i_median_rank"] = float(np.median(t2i) + 1)
  return out


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-8)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-8)
  return a @ b.T


def local_score_matrix(
  regions: np.ndarray,
  words: np.ndarray,
  word_mask: np.ndarray,
  *,
  gamma1: float,
  gamma2: float,
  image_chunk: int = 64,
  text_block: int | None = None,
) -> np.ndarray:
  """Z for every (image, text) pair, computed in chunks of images so memory stays bounded."""
  regions = np.asarray(regions)
  if regions.ndim == 4:
    regions = regions.reshape(regions.shape[0], -1, regions.shape[-1])
  words_j = jnp.asarray(words)
  mask_j = jnp.asarray(word_mask, bool)
  score = jax.jit(
    lambda r, w, m: losses.region_word_scores(r, w, m, gamma1, gamma2, text_block=text_block)
  )
  rows = [
    np.asarray(score(jnp.asarray(regions[s : s + image_chunk]), words_j, mask_j))
    for s in range(0, regions.shape[0], image_chunk)
  ]
  return np.concatenate(rows, axis=0)


def score_matrices(
  encoded: Mapping[str, np.ndarray],
  *,
  names: Iterable[str],
  gamma1: float,
  gamma2: float,
  gamma3: float,
) -> dict[str, np.ndarray]:
  """The requested score matrices from encoded embeddings (see the module docstring)."""
  names = tuple(names)
  out = {}
  glob = cosine_matrix(encoded["image_global"], encoded["sentence"])
  if "global" in names:
    out["global"] = glob
  if "local" in names or "combined" in names:
    local = local_score_matrix(
      encoded["regions"], encoded["words"], encoded["word_mask"], gamma1=gamma1, gamma2=gamma2
    )
    if "local" in names:
      out["local"] = local
    if "combined" in names:
      out["combined"] = gamma3 * (glob + local)
  unknown = set(names) - set(SCORES)
  if unknown:
    raise ValueError(f"unknown score(s) {sorted(unknown)}; known: {', '.join(SCORES)}")
  return out


def evaluate(
  encoded: Mapping[str, np.ndarray],
  *,
  ks=(1, 5, 10),
  scores=SCORES,
  gamma1: float = 4.0,
  gamma2: float = 5.0,
  gamma3: float = 10.0,
) -> dict[str, float]:
  """Recall@K for each score kind, flattened as '<score>/<metric>'."""
  results = {}
  for name, matrix in score_matrices(
    encoded, names=scores, gamma1=gamma1, gamma2=gamma2, gamma3=gamma3
  ).items():
    for metric, value in recall_at_k(matrix, ks).items():
      if metric.startswith("chance"):
        results[metric] = value
      else:
        results[f"{name}/{metric}"] = value
  results["num_pairs"] = float(len(encoded["image_global"]))
  return results
