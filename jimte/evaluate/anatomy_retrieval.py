"""Location-conditioned retrieval on an encoded split: one query per (image, abnormal region), a hit
is a case with the same finding in that region (jimte/evaluate/conditioned_retrieval.py), scored
with and without conditioning on the same pool.

Scores of query (image q, region r) against case g (all cosines):
- `global`: plain JoImTeRNet retrieval, image q's global vector against case g's report vector;
- `region_text`: q's embedding of region r against g's region-r text (image -> report, conditioned);
- `region_image`: q's embedding of region r against g's embedding of region r (image -> image);
- `blend`: (1 - blend) * region_text + blend * global.
The query's own case is left out of its ranking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from data_pipeline.names import CHEST_IMAGENOME_REGIONS
from jimte.evaluate import conditioned_retrieval as cr

SCORE_KINDS = ("global", "region_text", "region_image", "blend")
QUERY_REGION_SETS = ("all", "leaves")  # leaves: zones and structures, not the lungs containing them


def _l2(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def query_set(codes: np.ndarray, regions: str = "all") -> list[tuple[int, int]]:
  """The standard queries: every (image, region) with a finding; `leaves` drops parent regions."""
  if regions not in QUERY_REGION_SETS:
    raise ValueError(f"query regions must be one of {QUERY_REGION_SETS}, got {regions!r}")
  if regions == "all":
    return cr.single_region_queries(codes)
  from jimte.anatomy.regions import REGION_PARENTS

  parents = {CHEST_IMAGENOME_REGIONS.index(p) for p in REGION_PARENTS.values()}
  leaves = [r for r in range(len(CHEST_IMAGENOME_REGIONS)) if r not in parents]
  return cr.single_region_queries(codes, regions=leaves)


def query_scores(
  encoded: Mapping[str, np.ndarray], queries: Sequence[tuple[int, int]], blend: float
) -> dict[str, np.ndarray]:
  """{kind: scores [Q, N]} of `SCORE_KINDS` for the queries (image index, region index)."""
  image_global, sentence = _l2(encoded["image_global"]), _l2(encoded["sentence"])
  anatomy, region_text = _l2(encoded["anatomy"]), _l2(encoded["region_text"])
  q_image = np.array([q for q, _ in queries], np.int64)
  q_region = np.array([r for _, r in queries], np.int64)
  n = image_global.shape[0]
  out = {
    "global": image_global[q_image] @ sentence.T,
    "region_text": np.empty((len(queries), n), np.float32),
    "region_image": np.empty((len(queries), n), np.float32),
  }
  for r in np.unique(q_region):
    rows = np.flatnonzero(q_region == r)
    query = anatomy[q_image[rows], r]  # [q, D]
    out["region_text"][rows] = query @ region_text[:, r].T
    out["region_image"][rows] = query @ anatomy[:, r].T
  out["blend"] = (1.0 - blend) * out["region_text"] + blend * out["global"]
  return out


def evaluate(
  encoded: Mapping[str, np.ndarray],
  *,
  k: int = 10,
  blend: float = 0.5,
  regions: str = "all",
  kinds: Sequence[str] = SCORE_KINDS,
) -> dict[str, float]:
  """`<kind>/precision_at_k`, `<kind>/recall_at_k`, `<kind>/mean_average_precision`, the query
  count and the queries skipped (no other case with the finding in that region)."""
  unknown = sorted(set(kinds) - set(SCORE_KINDS))
  if unknown:
    raise ValueError(f"unknown score kind {unknown[0]!r}; known: {', '.join(SCORE_KINDS)}")
  codes = np.asarray(encoded["region_codes"], np.int32)
  queries = query_set(codes, regions)
  if not queries:
    return {"num_queries": 0.0}
  q_image = np.array([q for q, _ in queries])
  relevant = cr.conditioned_relevance(codes[q_image], codes, [[r] for _, r in queries], mode="or")
  exclude = q_image[:, None] == np.arange(codes.shape[0])[None, :]
  scores = query_scores(encoded, queries, blend)
  results: dict[str, float] = {}
  for kind in kinds:
    metrics = cr.ranking_metrics(scores[kind], relevant, k=k, exclude=exclude)
    for name in ("precision_at_k", "recall_at_k", "mean_average_precision"):
      results[f"{kind}/{name.replace('_at_k', f'@{k}')}"] = float(metrics[name])
    results["num_queries"] = float(metrics["num_queries"])
    results["skipped/no_relevant"] = float(metrics["skipped_no_relevant"])
  # Chance: a random ranking's mean precision, the mean share of relevant cases per query.
  kept = relevant & ~exclude
  has = kept.any(1)
  results["chance_precision"] = float(np.mean(kept[has].sum(1) / (~exclude[has]).sum(1)))
  return results
