"""Location-conditioned retrieval metrics (ALC-ITR, arXiv 2503.07456): is a retrieved case relevant
because it has the query's finding in the query's region, and how well a score ranks such cases.

Codes (jimte/anatomy/regions.py): int32 [N, 29] per image, regions in the standard order of
`CHEST_IMAGENOME_REGIONS`; bit k of code [n, r] set = CheXpert observation k is present (positive
or uncertain) in region r of image n; 0 = region r is normal. Codes arrive already propagated from
the lung zones to their lung, so a finding of "left upper lung zone" is also one of "left lung".

Relevance of gallery case g to query q (`conditioned_relevance`), with `findings` a bitmask of the
observations that count (all by default), shared(q, g, r) = query[q, r] & gallery[g, r] & findings
!= 0, and active(q) = the queried regions r of q where query[q, r] & findings != 0:
  "or":  relevant  <=>  shared(q, g, r) for at least one r in active(q)
  "and": relevant  <=>  shared(q, g, r) for every r in active(q)
A query whose queried regions hold none of the counted findings (active(q) empty) has no relevant
case in either mode (not "everything is relevant", which AND would give vacuously).

Ranking metrics (`ranking_metrics`), per query, over the gallery minus its `exclude`d cases (the
query's own image, the same patient): the ranking is by descending score, ties broken by ascending
gallery index (NaN scores as -inf); R = the query's relevant cases, hits(k) = those in the top k.
  P@k = hits(k) / k        R@k = hits(k) / |R|        AP = mean over g in R of precision at rank(g)
where precision at rank n = (relevant cases among the top n) / n; AP runs over the whole ranking.
A query with |R| = 0 is skipped and counted ('skipped_no_relevant'); the metrics are means over the
other queries ('num_queries'). numpy only (no jax), so the metrics run anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipeline.names import CHEST_IMAGENOME_REGIONS, CHEXPERT_OBSERVATIONS
from jimte.anatomy.regions import region_indices

NUM_REGIONS = len(CHEST_IMAGENOME_REGIONS)
MODES = ("and", "or")
ALL_FINDINGS = (1 << len(CHEXPERT_OBSERVATIONS)) - 1  # every observation bit counts
# Elements of one [chunk, G] block of the chunked computations: bounded memory at Q = G = 10^4.
_BLOCK_ELEMENTS = 1 << 22


def _rows_per_chunk(num_columns: int) -> int:
  """How many query rows one chunk holds so that a [rows, num_columns] block stays bounded."""
  return max(1, _BLOCK_ELEMENTS // max(1, num_columns))


def _codes(codes, name: str) -> np.ndarray:
  """Validated int64 [N, 29] codes (int64 so the bitwise AND never overflows a narrower dtype)."""
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[1] != NUM_REGIONS:
    raise ValueError(f"{name} must be [N, {NUM_REGIONS}] region codes, got shape {codes.shape}")
  if not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f"{name} must be integer bitmasks, got dtype {codes.dtype}")
  return codes.astype(np.int64)


def _region_index(region: int | str) -> int:
  """Standard index of a region given by index or by name; an error lists the valid names."""
  if isinstance(region, str):
    return region_indices([region])[0]
  index = int(region)
  if not 0 <= index < NUM_REGIONS or index != region:
    raise ValueError(f"region index {region!r} is not in [0, {NUM_REGIONS})")
  return index


def queried_region_mask(query_regions: Sequence[Sequence[int | str]]) -> np.ndarray:
  """bool [Q, 29]: which regions each query names (indices or names); a query needs at least one."""
  mask = np.zeros((len(query_regions), NUM_REGIONS), bool)
  for q, regions in enumerate(query_regions):
    if isinstance(regions, (str, int, np.integer)):
      raise ValueError(f"query {q}: regions must be a sequence of regions, got {regions!r}")
    if len(regions) == 0:
      raise ValueError(f"query {q} names no region")
    for region in regions:
      mask[q, _region_index(region)] = True
  return mask


def conditioned_relevance(
  query_codes,
  gallery_codes,
  query_regions: Sequence[Sequence[int | str]],
  mode: str = "or",
  findings: int | None = None,
) -> np.ndarray:
  """bool [Q, G]: gallery case g is relevant to query q when it has one of q's findings in q's
  regions ("or": in some active region; "and": in every active region; see the module docstring).

  `query_codes` [Q, 29] and `gallery_codes` [G, 29] are region codes; `query_regions[q]` the
  regions (indices or names) of query q; `findings` a bitmask of the observations that count.
  """
  if mode not in MODES:
    raise ValueError(f"mode {mode!r} is not one of {MODES}")
  query = _codes(query_codes, "query_codes")
  gallery = _codes(gallery_codes, "gallery_codes")
  regions = queried_region_mask(query_regions)
  if len(regions) != len(query):
    raise ValueError(f"{len(regions)} query region lists for {len(query)} query codes")
  counted = ALL_FINDINGS if findings is None else int(findings)
  if counted < 0 or counted & ~ALL_FINDINGS:
    raise ValueError(f"findings bitmask {counted:#x} has bits outside the 14 CheXpert observations")
  query = query & counted
  active = regions & (query != 0)  # [Q, 29]
  relevant = np.zeros((len(query), len(gallery)), bool)
  for start in range(0, len(query), _rows_per_chunk(len(gallery))):
    rows = slice(start, start + _rows_per_chunk(len(gallery)))
    block_query, block_active = query[rows], active[rows]
    block = np.full((len(block_query), len(gallery)), mode == "and")
    for r in np.flatnonzero(block_active.any(axis=0)):
      shared = (block_query[:, r, None] & gallery[None, :, r]) != 0  # [chunk, G]
      if mode == "or":
        block |= block_active[:, r, None] & shared
      else:  # a region the query has no finding in does not constrain the match
        block &= ~block_active[:, r, None] | shared
    relevant[rows] = block & block_active.any(axis=1)[:, None]
  return relevant


def single_region_queries(
  codes, regions: Sequence[int | str] | None = None
) -> list[tuple[int, int]]:
  """The standard query set: one (image index, region index) per abnormal region of each image,
  i.e. every nonzero code, in image then region order.

  Parent regions ("right lung") and their child zones both produce queries, since both carry codes
  (propagated upstream): a right upper zone nodule gives a "right upper lung zone" and a "right
  lung" query. `regions` (indices or names) keeps only queries on those regions, e.g. the zones
  alone, to count each finding once.
  """
  codes = _codes(codes, "codes")
  keep = np.ones(NUM_REGIONS, bool)
  if regions is not None:
    keep[:] = False
    keep[[_region_index(r) for r in regions]] = True
  images, region_ids = np.nonzero((codes != 0) & keep[None, :])
  return [(int(i), int(r)) for i, r in zip(images, region_ids, strict=True)]


def same_group_mask(query_groups, gallery_groups) -> np.ndarray:
  """bool [Q, G]: True where query and gallery case share a group id (the same image or patient),
  the `exclude` argument of `ranking_metrics` for leave-the-query-out retrieval."""
  return np.asarray(query_groups)[:, None] == np.asarray(gallery_groups)[None, :]


def _ranked_hits(scores: np.ndarray, relevant: np.ndarray, exclude: np.ndarray) -> np.ndarray:
  """bool [rows, G]: per row, whether each rank position holds a relevant case; the excluded cases
  are moved behind every other case and never count as relevant, so they drop out of the ranking."""
  scores = np.where(np.isnan(scores), -np.inf, scores)
  by_score = np.argsort(-scores, axis=1, kind="stable")  # ties keep ascending gallery index
  excluded_sorted = np.take_along_axis(exclude, by_score, axis=1)
  order = np.take_along_axis(by_score, np.argsort(excluded_sorted, axis=1, kind="stable"), axis=1)
  return np.take_along_axis(relevant & ~exclude, order, axis=1)


def ranking_metrics(scores, relevant, k: int = 10, exclude=None) -> dict[str, float]:
  """{'precision_at_k', 'recall_at_k', 'mean_average_precision', 'num_queries',
  'skipped_no_relevant'} of score rows [Q, G] against relevance [Q, G] (module docstring).

  `exclude` bool [Q, G] removes cases from a query's ranking (and from its relevant set). P@k
  divides by k even where fewer than k cases remain. Every metric is NaN if all queries are skipped.
  """
  scores = np.asarray(scores, np.float64)
  relevant = np.asarray(relevant, bool)
  if scores.ndim != 2 or relevant.shape != scores.shape:
    raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be equal [Q, G]")
  exclude = np.zeros(scores.shape, bool) if exclude is None else np.asarray(exclude, bool)
  if exclude.shape != scores.shape:
    raise ValueError(f"exclude {exclude.shape} must have the shape of scores {scores.shape}")
  if int(k) != k or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}")
  k = int(k)
  num_gallery = scores.shape[1]
  precision, recall, average_precision = [], [], []
  rank_numbers = np.arange(1, num_gallery + 1, dtype=np.float64)
  for start in range(0, len(scores), _rows_per_chunk(num_gallery)):
    rows = slice(start, start + _rows_per_chunk(num_gallery))
    hits = _ranked_hits(scores[rows], relevant[rows], exclude[rows])
    num_relevant = hits.sum(axis=1)
    evaluated = num_relevant > 0
    hits, num_relevant = hits[evaluated], num_relevant[evaluated]
    hits_at_k = hits[:, :k].sum(axis=1)
    precision_at_rank = np.cumsum(hits, axis=1) / rank_numbers
    precision.append(hits_at_k / k)
    recall.append(hits_at_k / num_relevant)
    average_precision.append((precision_at_rank * hits).sum(axis=1) / num_relevant)
  per_query = {
    "precision_at_k": precision,
    "recall_at_k": recall,
    "mean_average_precision": average_precision,
  }
  num_queries = sum(len(values) for values in precision)
  results = {
    name: float(np.mean(np.concatenate(values))) if num_queries else float("nan")
    for name, values in per_query.items()
  }
  results["num_queries"] = float(num_queries)
  results["skipped_no_relevant"] = float(len(scores) - num_queries)
  return results


def evaluate_conditioned(
  conditioned_scores,
  global_scores,
  query_codes,
  gallery_codes,
  query_regions: Sequence[Sequence[int | str]],
  *,
  mode: str = "or",
  findings: int | None = None,
  k: int = 10,
  exclude=None,
) -> dict[str, float]:
  """'conditioned/<metric>' and 'global/<metric>': `ranking_metrics` of the region-conditioned
  scores [Q, G] and of the plain global scores [Q, G] against one relevance, on one pool.

  Both rankings are judged by the same `conditioned_relevance` and `exclude`, so the two columns of
  a table differ only by the score: "with vs. without conditioning".
  """
  relevant = conditioned_relevance(query_codes, gallery_codes, query_regions, mode, findings)
  results = {}
  for name, scores in (("conditioned", conditioned_scores), ("global", global_scores)):
    for metric, value in ranking_metrics(scores, relevant, k, exclude).items():
      results[f"{name}/{metric}"] = value
  return results
