"""Image<->text retrieval: Recall@K in both directions over a held-out split, with chance level.

Scores (rows images, columns texts, as everywhere in jimte):
  global           = cos(image vector, sentence vector)             (the sentence-level matching)
  global_other_pooling = cos(image vector, sentence vector under the tower's other pooling)
  global_word_mean = cos(image vector, mean of the word vectors)
  local            = Z, the region-word matching score of losses.md (the word-level matching)
  combined         = gamma3 * (cos + Z), the sum of the two CE logits used in training
The sentence vector is the sentence head on the text tower's own pooling
(`model.text.sentence_pooling`: its first token, or the mean of its states over the words);
`global_other_pooling` puts the other of the two through the same head (`encode.OTHER_POOLING_KEY`,
as the original's notebook scores `pool='avg'` with a head trained on `'cls'`);
`global_word_mean` pools the word vectors instead, i.e. the word head on the mean of the states
over the words (the head is affine, so the mean passes through it).

The true text of image i is text i. A text identical to it (`texts`: two images of one study, or
two studies with the same report) counts as a hit too, and likewise, for text->image, an image
whose report is identical to the query; every other tie of score counts against the model (a
constant scorer gets R@K = 0 for K < N). With `finding_sets` (the pairs' sets of positive
findings) recall is also reported where a hit is any case with the same set of findings as the
query ('<score>/same_findings/...', chance exact for the group sizes: `group_chance_at_k`).
Recall is reported on the whole pool and as the mean over
pools of `pool_size` candidates (`pool_indices`: the original's consecutive blocks, or seeded
random draws); every process draws the same pools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jimte import losses
from jimte.evaluate.encode import OTHER_POOLING_KEY

SCORES = ("global", "global_other_pooling", "global_word_mean", "local", "combined")  # as above
POOL_SAMPLINGS = ("blocks", "random")


def text_groups(texts: Sequence[str]) -> np.ndarray:
  """int64 [N]: equal ids exactly where the texts are identical."""
  _, groups = np.unique(np.asarray(list(texts), dtype=object).astype(str), return_inverse=True)
  return groups.astype(np.int64).reshape(-1)


def _first_hit_ranks(
  scores: np.ndarray, row_groups: np.ndarray, col_groups: np.ndarray, chunk: int = 1024
) -> np.ndarray:
  """Per row: how many columns outside the row's group score >= its best in-group column."""
  ranks = []
  for start in range(0, scores.shape[0], chunk):
    block = scores[start : start + chunk]
    same = row_groups[start : start + chunk, None] == col_groups[None, :]
    best = np.where(same, block, -np.inf).max(axis=1)
    ranks.append(((block >= best[:, None]) & ~same).sum(axis=1))
  return np.concatenate(ranks)


def ranks_of_matches(
  scores: np.ndarray, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """0-based rank of the first hit for every image (row) and every text (column).

  A hit is the paired entry or, with `groups` (`text_groups` of the pairs' reports), any entry
  whose report is identical; ties with non-hits count against the model. NaN scores as -inf.
  """
  scores = np.asarray(scores, np.float64)
  scores = np.where(np.isnan(scores), -np.inf, scores)
  n = scores.shape[0]
  groups = np.arange(n) if groups is None else np.asarray(groups)
  if groups.shape != (n,):
    raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
  i2t = _first_hit_ranks(scores, groups, groups)
  t2i = _first_hit_ranks(scores.T, groups, groups)
  return i2t, t2i


def recall_at_k(
  scores: np.ndarray, ks: Iterable[int] = (1, 5, 10), groups: np.ndarray | None = None
) -> dict[str, float]:
  """{'i2t_R@K', 't2i_R@K', 'chance_R@K'} for each K (fractions in [0, 1]), and median ranks."""
  n_img, n_txt = np.shape(scores)
  if n_img != n_txt:
    raise ValueError(
      f"retrieval needs paired rows and columns, got scores of shape {(n_img, n_txt)}"
    )
  i2t, t2i = ranks_of_matches(scores, groups)
  out = {}
  for k in ks:
    out[f"i2t_R@{k}"] = float(np.mean(i2t < k))
    out[f"t2i_R@{k}"] = float(np.mean(t2i < k))
    out[f"chance_R@{k}"] = min(k, n_txt) / n_txt
  out["i2t_median_rank"] = float(np.median(i2t) + 1)
  out["t2i_median_rank"] = float(np.median(t2i) + 1)
  return out


def finding_set_groups(labels: np.ndarray) -> np.ndarray:
  """int64 [N]: equal ids exactly where two cases have the same set of positive labels (label ==
  1; uncertain, negative and unmentioned are all 'not positive')."""
  labels = np.asarray(labels, np.float32)
  if labels.ndim != 2:
    raise ValueError(f"labels must be [N, C], got shape {labels.shape}")
  positive = np.packbits(labels == 1.0, axis=1)
  _, groups = np.unique(positive, axis=0, return_inverse=True)
  return groups.astype(np.int64).reshape(-1)


def group_chance_at_k(groups: np.ndarray, k: int) -> float:
  """Expected R@K of a random ranking when a hit is any column of the query's group: the mean
  over queries of 1 - C(N - g, K) / C(N, K), g the query's group size (itself included)."""
  groups = np.asarray(groups)
  n = len(groups)
  k = min(k, n)
  _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
  g = counts[inverse].astype(np.float64)
  # C(N-g, K) / C(N, K) = prod_{j<K} (N-g-j) / (N-j), zero once N-g-j <= 0.
  j = np.arange(k, dtype=np.float64)
  miss = np.prod(np.clip((n - g[:, None] - j) / (n - j), 0.0, None), axis=1)
  return float(np.mean(1.0 - miss))


def pool_indices(
  num_pairs: int, pool_size: int, num_pools: int, sampling: str = "blocks", seed: int = 0
) -> list[np.ndarray]:
  """Row indices of the candidate pools: `num_pools` pools of `pool_size` pairs.

  "blocks" (the original's protocol): consecutive disjoint blocks in split order, as many of
  `num_pools` as fit; "random": pool j is `pool_size` distinct pairs drawn with numpy's PCG64
  seeded by (seed, j), sorted, so every process draws the same pools. No pools when `pool_size` is
  0 or exceeds `num_pairs`.
  """
  if sampling not in POOL_SAMPLINGS:
    raise ValueError(f"pool sampling {sampling!r} is not one of {POOL_SAMPLINGS}")
  if pool_size <= 0 or num_pools <= 0 or pool_size > num_pairs:
    return []
  if sampling == "blocks":
    count = min(num_pools, num_pairs // pool_size)
    return [np.arange(j * pool_size, (j + 1) * pool_size) for j in range(count)]
  return [
    np.sort(np.random.default_rng([seed, j]).choice(num_pairs, pool_size, replace=False))
    for j in range(num_pools)
  ]


def pooled_recall_at_k(
  scores: np.ndarray,
  pools: Sequence[np.ndarray],
  ks: Iterable[int] = (1, 5, 10),
  groups: np.ndarray | None = None,
) -> dict[str, float]:
  """`recall_at_k` on each pool's sub-matrix (its images against its texts), averaged over pools."""
  if not pools:
    raise ValueError("no pools to average over")
  scores = np.asarray(scores)
  per_pool = [
    recall_at_k(scores[np.ix_(p, p)], ks, None if groups is None else np.asarray(groups)[p])
    for p in pools
  ]
  return {k: float(np.mean([r[k] for r in per_pool])) for k in per_pool[0]}


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-8)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-8)
  return a @ b.T


def mean_word_vectors(words: np.ndarray, word_mask: np.ndarray) -> np.ndarray:
  """[N, D]: the mean of each text's word vectors [N, T, D] over its words (`word_mask` [N, T])."""
  weights = np.asarray(word_mask, np.float32)[..., None]
  total = (np.asarray(words, np.float32) * weights).sum(axis=1)
  return total / np.maximum(weights.sum(axis=1), 1.0)


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
  unknown = set(names) - set(SCORES)
  if unknown:
    raise ValueError(f"unknown score(s) {sorted(unknown)}; known: {', '.join(SCORES)}")
  out = {}
  glob = cosine_matrix(encoded["image_global"], encoded["sentence"])
  if "global" in names:
    out["global"] = glob
  if "global_other_pooling" in names:
    if OTHER_POOLING_KEY not in encoded:
      raise ValueError("score 'global_other_pooling': the text tower has no other pooling")
    out["global_other_pooling"] = cosine_matrix(encoded["image_global"], encoded[OTHER_POOLING_KEY])
  if "global_word_mean" in names:
    pooled = mean_word_vectors(encoded["words"], encoded["word_mask"])
    out["global_word_mean"] = cosine_matrix(encoded["image_global"], pooled)
  if "local" in names or "combined" in names:
    local = local_score_matrix(
      encoded["regions"], encoded["words"], encoded["word_mask"], gamma1=gamma1, gamma2=gamma2
    )
    if "local" in names:
      out["local"] = local
    if "combined" in names:
      out["combined"] = gamma3 * (glob + local)
  return {name: out[name] for name in names}


def evaluate(
  encoded: Mapping[str, np.ndarray],
  *,
  ks=(1, 5, 10),
  scores=SCORES,
  texts: Sequence[str] | None = None,
  finding_sets: np.ndarray | None = None,
  pool_size: int = 0,
  num_pools: int = 0,
  pool_sampling: str = "blocks",
  pool_seed: int = 0,
  gamma1: float = 4.0,
  gamma2: float = 5.0,
  gamma3: float = 10.0,
) -> dict[str, float]:
  """Recall@K for each score kind on the whole pool ('<score>/<metric>') and averaged over the
  pools of `pool_indices` ('<score>/pool<size>/<metric>', with 'pool<size>/chance_R@K' and
  'pool<size>/num_pools'). `texts` (the pairs' reports, in row order) turns on the tie-break of
  identical reports; `finding_sets` (`finding_set_groups` of the pairs' labels, in row order) adds
  the same-findings recall."""
  num_pairs = len(encoded["image_global"])
  groups = None
  if texts is not None:
    if len(texts) != num_pairs:
      raise ValueError(f"{len(texts)} texts for {num_pairs} encoded pairs")
    groups = text_groups(texts)
  if finding_sets is not None and len(finding_sets) != num_pairs:
    raise ValueError(f"{len(finding_sets)} finding sets for {num_pairs} encoded pairs")
  pools = pool_indices(num_pairs, pool_size, num_pools, pool_sampling, pool_seed)
  tag = f"pool{pool_size}"
  results: dict[str, float] = {}
  for name, matrix in score_matrices(
    encoded, names=scores, gamma1=gamma1, gamma2=gamma2, gamma3=gamma3
  ).items():
    for prefix, values in [
      ("", recall_at_k(matrix, ks, groups)),
      *([(f"{tag}/", pooled_recall_at_k(matrix, pools, ks, groups))] if pools else []),
    ]:
      for metric, value in values.items():
        if metric.startswith("chance"):
          results[f"{prefix}{metric}"] = value
        else:
          results[f"{name}/{prefix}{metric}"] = value
    if finding_sets is not None:
      same = recall_at_k(matrix, ks, finding_sets)
      for metric, value in same.items():
        if not metric.startswith("chance"):
          results[f"{name}/same_findings/{metric}"] = value
  if finding_sets is not None:
    for k in ks:
      results[f"same_findings/chance_R@{k}"] = group_chance_at_k(finding_sets, k)
    results["same_findings/num_sets"] = float(len(np.unique(finding_sets)))
  results["num_pairs"] = float(num_pairs)
  if pools:
    results[f"{tag}/num_pools"] = float(len(pools))
  if groups is not None:
    results["pairs_sharing_their_text"] = float(num_pairs - _singletons(groups))
  return results


def _singletons(groups: np.ndarray) -> int:
  """How many pairs have a text no other pair has."""
  _, counts = np.unique(groups, return_counts=True)
  return int((counts == 1).sum())
