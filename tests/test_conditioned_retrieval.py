"""Location-conditioned relevance and ranking metrics on hand-made codes and scores whose P@k, R@k
and AP are worked out by hand in the comments, and against brute-force references across chunks."""

import numpy as np
import pytest

from data_pipeline.names import CHEXPERT_INDEX, REGION_INDEX
from jimte.evaluate import conditioned_retrieval as cr

LESION = 1 << CHEXPERT_INDEX["Lung Lesion"]
EFFUSION = 1 << CHEXPERT_INDEX["Pleural Effusion"]
CARDIOMEGALY = 1 << CHEXPERT_INDEX["Cardiomegaly"]
RIGHT_LUNG = REGION_INDEX["right lung"]
RIGHT_LOWER = REGION_INDEX["right lower lung zone"]
LEFT_ANGLE = REGION_INDEX["left costophrenic angle"]
HEART = REGION_INDEX["cardiac silhouette"]


def codes_of(*cases):
  """int32 [N, 29] codes from one {region index: bitmask} dict per image."""
  codes = np.zeros((len(cases), 29), np.int32)
  for n, case in enumerate(cases):
    for region, bits in case.items():
      codes[n, region] = bits
  return codes


# The query: a lesion in the right lower zone and an effusion in the left costophrenic angle.
QUERY = codes_of({RIGHT_LOWER: LESION, LEFT_ANGLE: EFFUSION})
GALLERY = codes_of(
  {RIGHT_LOWER: LESION},  # g0: the lesion only
  {RIGHT_LOWER: LESION, LEFT_ANGLE: EFFUSION},  # g1: both, each in its region
  {RIGHT_LOWER: EFFUSION, LEFT_ANGLE: LESION},  # g2: the same two findings, regions swapped
  {},  # g3: normal
  {LEFT_ANGLE: EFFUSION | CARDIOMEGALY},  # g4: the effusion (and an unrelated bit) only
)


def test_or_needs_one_shared_region_and_needs_all_regions_with_a_finding():
  regions = [[RIGHT_LOWER, LEFT_ANGLE]]
  any_region = cr.conditioned_relevance(QUERY, GALLERY, regions, "or")
  every_region = cr.conditioned_relevance(QUERY, GALLERY, regions, "and")
  # g2 has both findings but never in the same region as the query: relevant in neither mode.
  np.testing.assert_array_equal(any_region, [[True, True, False, False, True]])
  np.testing.assert_array_equal(every_region, [[False, True, False, False, False]])


def test_regions_are_accepted_by_name_and_a_region_without_finding_does_not_constrain_and():
  # The query is normal in the heart: under AND only the right lower zone constrains the match.
  regions = [["right lower lung zone", "cardiac silhouette"]]
  every_region = cr.conditioned_relevance(QUERY, GALLERY, regions, "and")
  np.testing.assert_array_equal(every_region, [[True, True, False, False, False]])


def test_a_query_with_no_finding_in_its_regions_has_no_relevant_case():
  # The heart is normal in the query: AND is not vacuously true, OR has nothing to share.
  for mode in cr.MODES:
    relevant = cr.conditioned_relevance(QUERY, GALLERY, [[HEART]], mode)
    assert not relevant.any(), mode


def test_the_findings_mask_restricts_which_observations_count():
  relevant = cr.conditioned_relevance(
    QUERY, GALLERY, [[RIGHT_LOWER, LEFT_ANGLE]], "or", findings=EFFUSION
  )
  # Only the effusion of the left costophrenic angle counts: g1 and g4.
  np.testing.assert_array_equal(relevant, [[False, True, False, False, True]])
  # Cardiomegaly alone: the query has none in its regions, so nothing is relevant even in g4.
  relevant = cr.conditioned_relevance(QUERY, GALLERY, [[LEFT_ANGLE]], "or", findings=CARDIOMEGALY)
  assert not relevant.any()


def brute_force_relevance(query, gallery, query_regions, mode):
  """Relevance by loops over queries, gallery cases and regions, straight from the definition."""
  out = np.zeros((len(query), len(gallery)), bool)
  for q in range(len(query)):
    active = [r for r in query_regions[q] if query[q, r] != 0]
    for g in range(len(gallery)):
      shared = [int(query[q, r]) & int(gallery[g, r]) != 0 for r in active]
      out[q, g] = bool(active) and (all(shared) if mode == "and" else any(shared))
  return out


@pytest.mark.parametrize("block_elements", [16, cr._BLOCK_ELEMENTS])  # 1 row a chunk, or all
@pytest.mark.parametrize("mode", cr.MODES)
def test_relevance_matches_the_definition_across_chunks(monkeypatch, mode, block_elements):
  monkeypatch.setattr(cr, "_BLOCK_ELEMENTS", block_elements)
  rng = np.random.default_rng(0)
  # Sparse codes over 3 observations, so that every kind of match and miss occurs.
  bits = np.array([0, LESION, EFFUSION, CARDIOMEGALY], np.int32)
  query = bits[rng.choice(4, (12, 29), p=[0.7, 0.1, 0.1, 0.1])]
  gallery = bits[rng.choice(4, (40, 29), p=[0.7, 0.1, 0.1, 0.1])]
  query_regions = [list(rng.choice(29, rng.integers(1, 4), replace=False)) for _ in range(12)]
  expected = brute_force_relevance(query, gallery, query_regions, mode)
  assert 0 < expected.sum() < expected.size
  np.testing.assert_array_equal(
    cr.conditioned_relevance(query, gallery, query_regions, mode), expected
  )


def test_relevance_rejects_bad_arguments():
  with pytest.raises(ValueError, match="xor"):
    cr.conditioned_relevance(QUERY, GALLERY, [[RIGHT_LOWER]], "xor")
  with pytest.raises(ValueError, match="names no region"):
    cr.conditioned_relevance(QUERY, GALLERY, [[]], "or")
  with pytest.raises(ValueError, match="1 query region lists for 2"):
    cr.conditioned_relevance(np.concatenate([QUERY, QUERY]), GALLERY, [[RIGHT_LOWER]], "or")
  with pytest.raises(ValueError, match=r"\[N, 29\]"):
    cr.conditioned_relevance(QUERY[:, :28], GALLERY, [[RIGHT_LOWER]], "or")
  with pytest.raises(ValueError, match="'right lower lobe'.*right lung, right upper lung zone"):
    cr.conditioned_relevance(QUERY, GALLERY, [["right lower lobe"]], "or")
  with pytest.raises(ValueError, match="outside the 14"):
    cr.conditioned_relevance(QUERY, GALLERY, [[RIGHT_LOWER]], "or", findings=1 << 14)


def test_single_region_queries_are_every_abnormal_region_parents_included():
  codes = codes_of(
    {RIGHT_LOWER: LESION, RIGHT_LUNG: LESION},  # a zone finding, propagated to its lung upstream
    {},
    {HEART: CARDIOMEGALY, LEFT_ANGLE: EFFUSION},
  )
  assert cr.single_region_queries(codes) == [
    (0, RIGHT_LUNG),
    (0, RIGHT_LOWER),
    (2, LEFT_ANGLE),
    (2, HEART),
  ]
  assert cr.single_region_queries(codes, regions=["right lower lung zone", HEART]) == [
    (0, RIGHT_LOWER),
    (2, HEART),
  ]
  assert cr.single_region_queries(codes, regions=[REGION_INDEX["left lung"]]) == []
  with pytest.raises(ValueError, match="not in"):
    cr.single_region_queries(codes, regions=[29])


def test_precision_recall_and_ap_by_hand():
  scores = np.array(
    [
      [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # ranking g0 g1 g2 g3 g4 g5
      [0.1, 0.3, 0.2, 0.9, 0.5, 0.8],  # ranking g3 g5 g4 g1 g2 g0
    ]
  )
  relevant = np.array(
    [
      [True, False, True, False, False, True],  # relevant at ranks 1, 3, 6
      [False, True, False, False, True, False],  # relevant g4 at rank 3, g1 at rank 4
    ]
  )
  out = cr.ranking_metrics(scores, relevant, k=3)
  # q0: top 3 holds 2 of 3 relevant: P@3 = 2/3, R@3 = 2/3; AP = (1/1 + 2/3 + 3/6) / 3 = 13/18.
  # q1: top 3 holds 1 of 2 relevant: P@3 = 1/3, R@3 = 1/2; AP = (1/3 + 2/4) / 2 = 5/12.
  assert out["precision_at_k"] == pytest.approx((2 / 3 + 1 / 3) / 2)
  assert out["recall_at_k"] == pytest.approx((2 / 3 + 1 / 2) / 2)
  assert out["mean_average_precision"] == pytest.approx((13 / 18 + 5 / 12) / 2)  # = 41/72
  assert out["num_queries"] == 2 and out["skipped_no_relevant"] == 0


def test_perfect_ranking_gives_map_one_and_reversed_the_hand_value():
  relevant = np.array([[True, True, False, False]])
  perfect = cr.ranking_metrics(np.array([[4.0, 3.0, 2.0, 1.0]]), relevant, k=2)
  assert perfect["mean_average_precision"] == 1.0
  assert perfect["precision_at_k"] == 1.0 and perfect["recall_at_k"] == 1.0
  reversed_ = cr.ranking_metrics(np.array([[1.0, 2.0, 3.0, 4.0]]), relevant, k=2)
  # Relevant at ranks 3 and 4: AP = (1/3 + 2/4) / 2 = 5/12; none in the top 2.
  assert reversed_["mean_average_precision"] == pytest.approx(5 / 12)
  assert reversed_["precision_at_k"] == 0.0 and reversed_["recall_at_k"] == 0.0


def test_ties_break_by_gallery_index_and_nan_scores_last():
  tied = np.full((2, 4), 0.5)
  relevant = np.array([[False, False, True, False], [True, False, False, False]])
  out = cr.ranking_metrics(tied, relevant, k=1)
  # Ranking g0 g1 g2 g3 for both: q0's case at rank 3 (AP 1/3, P@1 0), q1's at rank 1 (AP 1).
  assert out["mean_average_precision"] == pytest.approx((1 / 3 + 1) / 2)
  assert out["precision_at_k"] == pytest.approx(0.5)
  nan_first = cr.ranking_metrics(np.array([[np.nan, 0.1, 0.2]]), np.array([[True, False, False]]))
  assert nan_first["mean_average_precision"] == pytest.approx(1 / 3)  # NaN ranks last: rank 3
  # NaN scores as -inf exactly, so it ties with -inf and the lower gallery index wins: rank 1.
  nan_tie = cr.ranking_metrics(np.array([[np.nan, -np.inf]]), np.array([[True, False]]))
  assert nan_tie["mean_average_precision"] == 1.0


def test_precision_divides_by_k_even_past_the_gallery():
  out = cr.ranking_metrics(np.array([[0.3, 0.2, 0.1]]), np.array([[True, False, False]]), k=10)
  assert out["precision_at_k"] == pytest.approx(1 / 10) and out["recall_at_k"] == 1.0


def test_exclude_removes_cases_from_the_ranking():
  scores = np.array([[1.0, 0.9, 0.8, 0.7]])  # g0 is the query's own image
  relevant = np.array([[True, False, True, False]])
  kept = cr.ranking_metrics(scores, relevant, k=1)
  # With itself: relevant at ranks 1 and 3: AP = (1 + 2/3) / 2 = 5/6, P@1 = 1.
  assert kept["mean_average_precision"] == pytest.approx(5 / 6) and kept["precision_at_k"] == 1.0
  self_out = cr.same_group_mask(np.array([0]), np.arange(4))
  removed = cr.ranking_metrics(scores, relevant, k=1, exclude=self_out)
  # Ranking g1 g2 g3: g2 at rank 2, AP = 1/2 (it would be 1/3 were g0 kept as a non-relevant).
  assert removed["mean_average_precision"] == pytest.approx(1 / 2)
  assert removed["precision_at_k"] == 0.0 and removed["recall_at_k"] == 0.0
  # Excluding the only relevant case leaves the query with none: skipped.
  only_self = cr.ranking_metrics(scores, np.array([[True, False, False, False]]), exclude=self_out)
  assert only_self["num_queries"] == 0 and only_self["skipped_no_relevant"] == 1
  assert np.isnan(only_self["mean_average_precision"])


def test_same_group_mask_marks_the_same_patient():
  mask = cr.same_group_mask(np.array(["p1", "p2"]), np.array(["p2", "p1", "p1"]))
  np.testing.assert_array_equal(mask, [[False, True, True], [True, False, False]])


def test_queries_without_relevant_case_are_skipped_and_counted():
  scores = np.array(
    [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.5, 0.4, 0.3, 0.2, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]
  )
  relevant = np.array(
    [
      [True, False, True, False, False, True],  # AP 13/18 (as in the hand test above)
      [False] * 6,  # nothing relevant: skipped, not scored as 0
      [False, False, False, False, True, True],  # ranking g5 g4 ...: perfect, AP 1
    ]
  )
  out = cr.ranking_metrics(scores, relevant, k=3)
  assert out["num_queries"] == 2 and out["skipped_no_relevant"] == 1
  assert out["mean_average_precision"] == pytest.approx((13 / 18 + 1) / 2)
  # P@3: q0 2/3, q2 2/3; R@3: q0 2/3, q2 1.
  assert out["precision_at_k"] == pytest.approx(2 / 3)
  assert out["recall_at_k"] == pytest.approx((2 / 3 + 1) / 2)


def brute_force_metrics(scores, relevant, k, exclude):
  """P@k, R@k and mAP by sorting each row in Python with (-score, index), excluded cases removed."""
  precision, recall, average_precision = [], [], []
  for q in range(len(scores)):
    candidates = [g for g in range(scores.shape[1]) if not exclude[q, g]]
    order = sorted(candidates, key=lambda g, q=q: (-scores[q, g], g))
    hits = [bool(relevant[q, g]) for g in order]
    if not any(hits):
      continue
    precision.append(sum(hits[:k]) / k)
    recall.append(sum(hits[:k]) / sum(hits))
    ranks = [n + 1 for n, hit in enumerate(hits) if hit]
    average_precision.append(np.mean([(i + 1) / rank for i, rank in enumerate(ranks)]))
  return np.mean(precision), np.mean(recall), np.mean(average_precision), len(precision)


def test_ranking_metrics_match_a_brute_force_reference_across_chunks(monkeypatch):
  monkeypatch.setattr(cr, "_BLOCK_ELEMENTS", 60)  # 60 // 25 columns -> two query rows per chunk
  rng = np.random.default_rng(1)
  scores = np.round(rng.standard_normal((9, 25)), 1)  # rounded: many ties
  relevant = rng.random((9, 25)) < 0.2
  relevant[4] = False
  exclude = rng.random((9, 25)) < 0.1
  out = cr.ranking_metrics(scores, relevant, k=5, exclude=exclude)
  precision, recall, average_precision, count = brute_force_metrics(scores, relevant, 5, exclude)
  assert out["num_queries"] == count and out["skipped_no_relevant"] == 9 - count
  assert out["precision_at_k"] == pytest.approx(precision)
  assert out["recall_at_k"] == pytest.approx(recall)
  assert out["mean_average_precision"] == pytest.approx(average_precision)


def test_evaluate_conditioned_judges_both_scores_by_one_relevance():
  # Per-region queries of two images against a gallery of four, the query images excluded.
  codes = codes_of(
    {RIGHT_LOWER: LESION},
    {LEFT_ANGLE: EFFUSION},
    {RIGHT_LOWER: LESION | EFFUSION},
    {LEFT_ANGLE: EFFUSION},
  )
  queries = cr.single_region_queries(codes[:2])
  assert queries == [(0, RIGHT_LOWER), (1, LEFT_ANGLE)]
  images = np.array([i for i, _ in queries])
  # Relevant: q0 (lesion, right lower zone) -> g0, g2; q1 (effusion, left angle) -> g1, g3.
  conditioned = np.array([[0.0, 0.1, 0.9, 0.2], [0.0, 0.0, 0.1, 0.8]])  # g2 / g3 first: perfect
  global_ = np.array([[0.0, 0.9, 0.1, 0.5], [0.0, 0.0, 0.9, 0.1]])  # the other finding ranks first
  out = cr.evaluate_conditioned(
    conditioned,
    global_,
    codes[images],
    codes,
    [[r] for _, r in queries],
    k=1,
    exclude=cr.same_group_mask(images, np.arange(4)),
  )
  # After excluding the query image, each query has one relevant case (g2, g3).
  assert out["conditioned/mean_average_precision"] == 1.0
  assert out["conditioned/precision_at_k"] == 1.0
  # Global: q0 ranks g1 g3 g2 -> rank 3, AP 1/3; q1 ranks g2 g3 g0 -> rank 2, AP 1/2.
  assert out["global/mean_average_precision"] == pytest.approx((1 / 3 + 1 / 2) / 2)
  assert out["global/precision_at_k"] == 0.0
  assert out["conditioned/num_queries"] == out["global/num_queries"] == 2
  assert set(out) == {
    f"{name}/{metric}"
    for name in ("conditioned", "global")
    for metric in (
      "precision_at_k",
      "recall_at_k",
      "mean_average_precision",
      "num_queries",
      "skipped_no_relevant",
    )
  }


def test_ranking_metrics_reject_mismatched_shapes_and_bad_k():
  with pytest.raises(ValueError, match="must be equal"):
    cr.ranking_metrics(np.zeros((2, 3)), np.zeros((2, 4), bool))
  with pytest.raises(ValueError, match="exclude"):
    cr.ranking_metrics(np.zeros((2, 3)), np.zeros((2, 3), bool), exclude=np.zeros((3, 2), bool))
  with pytest.raises(ValueError, match="positive integer"):
    cr.ranking_metrics(np.zeros((2, 3)), np.zeros((2, 3), bool), k=0)
