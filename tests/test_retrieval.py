"""Recall@K and ranks of the retrieval evaluator on matrices whose answers are known: against a
brute-force reference, with duplicate reports, averaged over candidate pools, and end to end
through the evaluator with one frontal image per study."""

import jax
import ml_collections
import numpy as np
import pytest

from data_pipeline import input as inp
from jimte import sharding
from jimte.data import DataBundle
from jimte.evaluate import encode, registry, retrieval
from jimte.models.joimternet import build_model
from tests._input_data import make_arrays
from tests._tiny import tiny_config


def brute_force_recall(scores, ks, texts=None):
  """R@K by sorting every row (and column) with ties broken against the model: among equal
  scores the non-hits come first; a hit is the paired entry or one with an identical text."""
  scores = np.asarray(scores, np.float64)
  n = len(scores)
  texts = list(range(n)) if texts is None else list(texts)
  out = {}
  for direction, matrix in (("i2t", scores), ("t2i", scores.T)):
    ranks = []
    for q in range(n):
      hits = [texts[c] == texts[q] for c in range(n)]
      order = sorted(range(n), key=lambda c, q=q, hits=hits: (-matrix[q, c], hits[c]))
      ranks.append(next(pos for pos, c in enumerate(order) if hits[c]))
    for k in ks:
      out[f"{direction}_R@{k}"] = float(np.mean(np.array(ranks) < k))
  return out


def test_perfect_scores_give_full_recall():
  scores = np.eye(7) + 0.01 * np.random.default_rng(0).standard_normal((7, 7))
  out = retrieval.recall_at_k(scores, ks=(1, 5))
  assert out["i2t_R@1"] == 1.0 and out["t2i_R@1"] == 1.0
  assert out["chance_R@5"] == pytest.approx(5 / 7)


def test_ranks_both_directions():
  # Row 0: its text is 3rd (two scores higher). Columns: text 0 is 2nd, text 1 3rd, text 2 2nd.
  scores = np.array([[0.1, 0.5, 0.9], [0.0, 0.4, 0.2], [0.3, 0.6, 0.8]])
  i2t, t2i = retrieval.ranks_of_matches(scores)
  np.testing.assert_array_equal(i2t, [2, 0, 0])
  np.testing.assert_array_equal(t2i, [1, 2, 1])
  out = retrieval.recall_at_k(scores, ks=(1, 2))
  assert out["i2t_R@1"] == pytest.approx(2 / 3)
  assert out["t2i_R@1"] == 0.0
  assert out["t2i_R@2"] == pytest.approx(2 / 3)


def test_ties_count_against_the_model():
  out = retrieval.recall_at_k(np.zeros((10, 10)), ks=(1, 5, 10))
  assert out["i2t_R@1"] == 0.0 and out["i2t_R@5"] == 0.0
  assert out["i2t_R@10"] == 1.0  # rank 10 of 10 is still inside the top 10


def test_nan_scores_count_against_the_model():
  scores = np.eye(4)
  scores[1, 1] = np.nan
  i2t, t2i = retrieval.ranks_of_matches(scores)
  assert i2t[1] == 3 and t2i[1] == 3 and i2t[0] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force_with_ties_and_duplicate_texts(seed):
  rng = np.random.default_rng(seed)
  n = 40
  scores = rng.integers(0, 4, (n, n)).astype(float)  # few values: ties everywhere
  texts = [f"report {t}" for t in rng.integers(0, 25, n)]  # some reports repeated
  ks = (1, 3, 5, 10)
  for groups, reference_texts in ((None, None), (retrieval.text_groups(texts), texts)):
    out = retrieval.recall_at_k(scores, ks, groups)
    expected = brute_force_recall(scores, ks, reference_texts)
    assert {k: out[k] for k in expected} == pytest.approx(expected)


def test_duplicate_reports_count_as_hits_and_equal_scores_do_not():
  # Rows 0 and 1 are two images of one study (one report, texts 0 and 1 identical); rows 2 and 3
  # have distinct reports. Every row scores texts 0..3 equally, except that row 0 prefers text 1
  # (its report's duplicate), row 2 prefers text 3 and row 3 prefers text 2.
  scores = np.array(
    [
      [0.5, 0.9, 0.1, 0.1],
      [0.5, 0.5, 0.5, 0.5],
      [0.2, 0.2, 0.5, 0.9],
      [0.2, 0.2, 0.9, 0.5],
    ]
  )
  texts = ["no acute disease.", "no acute disease.", "left effusion.", "right effusion."]
  groups = retrieval.text_groups(texts)
  np.testing.assert_array_equal(groups[:2], [groups[0]] * 2)
  assert len(set(groups.tolist())) == 3
  i2t, t2i = retrieval.ranks_of_matches(scores, groups)
  # Row 0: its best identical text (1) is on top. Row 1: ties with texts 2 and 3 count against it
  # (rank 2) even though texts 0 and 1 tie with them too. Rows 2, 3: their own text is second.
  np.testing.assert_array_equal(i2t, [0, 2, 1, 1])
  plain_i2t, _ = retrieval.ranks_of_matches(scores)
  np.testing.assert_array_equal(plain_i2t, [1, 3, 1, 1])  # without the tie-break
  # Texts 0 and 1 find images 0 and 1 (identical reports) on top; texts 2 and 3 are beaten by
  # each other's image and tied by image 1, whose report differs: rank 2.
  np.testing.assert_array_equal(t2i, [0, 0, 2, 2])
  out = retrieval.recall_at_k(scores, (1,), groups)
  assert out["i2t_R@1"] == 0.25 and out["t2i_R@1"] == 0.5


def test_pool_average_matches_a_direct_computation():
  rng = np.random.default_rng(3)
  n, size = 2150, 1000
  signal = rng.standard_normal((n, 16))
  scores = signal @ signal.T / 4 + rng.standard_normal((n, n))
  texts = [f"r{t}" for t in rng.integers(0, 1900, n)]
  groups = retrieval.text_groups(texts)
  ks = (1, 5, 10)
  blocks = retrieval.pool_indices(n, size, 3, "blocks")
  assert len(blocks) == 2  # as many of the 3 blocks as fit in 2150
  direct = []
  for start in (0, 1000):
    rows = slice(start, start + size)
    direct.append(retrieval.recall_at_k(scores[rows, rows], ks, groups[rows]))
  out = retrieval.pooled_recall_at_k(scores, blocks, ks, groups)
  for key in direct[0]:
    assert out[key] == pytest.approx(np.mean([d[key] for d in direct]))
  assert out["chance_R@10"] == pytest.approx(0.01)
  # Random pools: distinct pairs, the same for the same seed, averaged the same way.
  pools = retrieval.pool_indices(n, size, 3, "random", seed=7)
  assert [len(np.unique(p)) for p in pools] == [size] * 3
  again = retrieval.pool_indices(n, size, 3, "random", seed=7)
  assert all(np.array_equal(a, b) for a, b in zip(pools, again, strict=True))
  assert not np.array_equal(pools[0], retrieval.pool_indices(n, size, 1, "random", seed=8)[0])
  small = scores[np.ix_(pools[1], pools[1])]
  assert retrieval.pooled_recall_at_k(scores, pools[1:2], ks, groups)["i2t_R@5"] == pytest.approx(
    brute_force_recall(small, (5,), np.asarray(texts)[pools[1]])["i2t_R@5"]
  )
  assert retrieval.pool_indices(n, n + 1, 3) == [] and retrieval.pool_indices(n, 0, 3) == []


def test_evaluate_names_both_pool_sizes_and_both_poolings():
  rng = np.random.default_rng(4)
  n, t, d = 30, 6, 8
  encoded = {
    "image_global": rng.standard_normal((n, d)),
    "sentence": rng.standard_normal((n, d)),
    "words": rng.standard_normal((n, t, d)),
    "word_mask": rng.random((n, t)) < 0.7,
  }
  encoded["word_mask"][:, 0] = True
  texts = [f"t{i % 20}" for i in range(n)]
  out = retrieval.evaluate(
    encoded,
    ks=(1, 5),
    scores=("global", "global_word_mean"),
    texts=texts,
    pool_size=10,
    num_pools=3,
  )
  mask = encoded["word_mask"][..., None]
  word_mean = (encoded["words"] * mask).sum(1) / mask.sum(1)
  groups = retrieval.text_groups(texts)
  expected = retrieval.recall_at_k(
    retrieval.cosine_matrix(encoded["image_global"], word_mean), (1, 5), groups
  )
  assert out["global_word_mean/i2t_R@5"] == pytest.approx(expected["i2t_R@5"])
  pooled = retrieval.pooled_recall_at_k(
    retrieval.cosine_matrix(encoded["image_global"], encoded["sentence"]),
    retrieval.pool_indices(n, 10, 3),
    (1, 5),
    groups,
  )
  assert out["global/pool10/t2i_R@1"] == pytest.approx(pooled["t2i_R@1"])
  assert out["pool10/chance_R@5"] == 0.5 and out["chance_R@5"] == pytest.approx(5 / 30)
  assert out["pool10/num_pools"] == 3 and out["num_pairs"] == n
  assert out["pairs_sharing_their_text"] == 20  # t0..t9 appear twice
  assert "global/pool10/i2t_median_rank" in out


def test_random_scores_sit_at_chance():
  rng = np.random.default_rng(1)
  scores = rng.standard_normal((400, 400))
  out = retrieval.recall_at_k(scores, ks=(10,))
  assert abs(out["i2t_R@10"] - out["chance_R@10"]) < 0.05


def test_non_square_is_an_error():
  with pytest.raises(ValueError, match="paired"):
    retrieval.recall_at_k(np.zeros((3, 4)))


def test_cosine_matrix_is_scale_invariant():
  rng = np.random.default_rng(2)
  a, b = rng.standard_normal((5, 8)), rng.standard_normal((6, 8))
  np.testing.assert_allclose(
    retrieval.cosine_matrix(3 * a, 0.5 * b), retrieval.cosine_matrix(a, b), rtol=1e-5
  )


@pytest.mark.parametrize(
  "setting, key",
  [
    (dict(pool_size=-1), "pool_size"),
    (dict(num_pools=1.5), "num_pools"),
    (dict(pool_sampling="shuffled"), "pool_sampling"),
    (dict(one_image_per_study="yes"), "one_image_per_study"),
    (dict(same_findings=1), "same_findings"),
    (dict(same_findings="yes"), "same_findings"),
  ],
)
def test_bad_retrieval_settings_name_their_key(setting, key):
  config = tiny_config()
  config.evals = ml_collections.ConfigDict({"r": dict(type="retrieval", split="test", **setting)})
  with pytest.raises(ValueError, match=rf"config\.evals\.r\.{key}"):
    registry.build_evaluators(config)


def test_other_pooling_score_without_another_pooling_fails_when_built():
  """A text tower pooling 'word_mean' has no other pooling: the retrieval entry that asks for its
  score fails when the evaluators are built (before training), naming the key."""
  config = tiny_config()
  config.model.text.sentence_pooling = "word_mean"
  config.evals = ml_collections.ConfigDict(
    {"r": dict(type="retrieval", split="test", scores=("global", "global_other_pooling"))}
  )
  with pytest.raises(ValueError, match=r"config\.evals\.r\.scores.*word_mean"):
    registry.build_evaluators(config)
  config.evals.r.scores = ("global", "local")
  assert [e.name for e in registry.build_evaluators(config)] == ["r"]


def test_evaluator_scores_one_frontal_image_per_study(tokenizer, tmp_path):
  """12 images of 6 studies (pairs share a study and its report); 2 images are lateral. The
  evaluator encodes one frontal image per study and counts what it dropped."""
  config = tiny_config()
  images, texts, studies = make_arrays(12, height=64, width=64)
  texts = [texts[2 * (i // 2)] for i in range(12)]  # one report per study
  dataset = inp.DatasetSource(
    _tf_dataset(images, texts, studies, views=["PA", "AP", "L", "PA"] + ["AP", "LL"] + ["PA"] * 6),
    name="toy/test",
  )
  data = DataBundle(
    config=config,
    sources={"test": dataset},
    tokenizer=tokenizer,
    tokenizer_dir=str(tmp_path),
    ground_truth={},
  )
  config.evals = ml_collections.ConfigDict(
    {
      "r": dict(
        type="retrieval",
        split="test",
        scores=("global", "global_other_pooling"),
        pool_size=2,
        num_pools=3,
      ),
      "f": dict(
        type="retrieval", split="test", scores=("global",), pool_size=0, one_image_per_study=True
      ),
    }
  )
  by_name = {e.name: e for e in registry.build_evaluators(config)}
  plain, filtered = by_name["r"], by_name["f"]
  assert plain.input_split(data) == "test"
  name = filtered.input_split(data)
  assert name == "test[one_image_per_study]" and filtered.input_split(data) == name
  model_config = config.model.copy_and_resolve_references()
  model_config.text.vocab_size = tokenizer.vocab_size
  model = build_model(model_config)
  mesh = sharding.make_mesh(config.mesh)
  first = next(iter(data.eval_batches(mesh, "test")))
  variables = _random_variables(model, first["image"], first["tokens"])
  encode_fn = encode.make_encode_fn(model)
  encoded = {
    split: encode.encode_split(encode_fn, variables, data.eval_batches(mesh, split))
    for split in ("test", name)
  }
  # Study 0: dicoms of rows 0, 1 frontal -> row 0; study 1: row 3 (row 2 lateral); study 2: row 4
  # (row 5 lateral); studies 3..5: their first row.
  np.testing.assert_array_equal(encoded[name]["index"], [0, 3, 4, 6, 8, 10])
  np.testing.assert_allclose(
    encoded[name]["image_global"], encoded["test"]["image_global"][[0, 3, 4, 6, 8, 10]], atol=1e-5
  )
  # The other sentence pooling: the same parameters through a tower built with that pooling.
  own = model_config.text.sentence_pooling
  other = encode.other_pooling(model)
  assert {own, other} == {"first", "mean"}
  model_config.text.sentence_pooling = other
  other_model = build_model(model_config)
  batch = next(iter(data.eval_batches(mesh, "test")))
  other_sentence = jax.jit(
    lambda v, t: other_model.apply(v, t, False, method="encode_text").sentence
  )
  np.testing.assert_allclose(
    encoded["test"]["sentence_other_pooling"][:8],
    np.asarray(other_sentence(variables, batch["tokens"])),
    atol=1e-5,
  )
  assert not np.allclose(encoded["test"]["sentence_other_pooling"], encoded["test"]["sentence"])
  out = filtered(encoded[name], data=data, workdir=str(tmp_path))
  assert out["num_pairs"] == 6 and out["pairs_sharing_their_text"] == 0
  assert out["one_image_per_study/num_images"] == 12
  assert out["one_image_per_study/dropped_same_study"] == 4
  assert out["one_image_per_study/dropped_not_frontal"] == 2
  assert out["one_image_per_study/studies_without_frontal"] == 0
  full = plain(encoded["test"], data=data, workdir=str(tmp_path))
  assert full["num_pairs"] == 12 and full["pairs_sharing_their_text"] == 12
  assert full["pool2/num_pools"] == 3 and "global/pool2/i2t_R@1" in full
  # Every image of a study is matched by the study's report, in whichever column it sits.
  expected = retrieval.recall_at_k(
    retrieval.cosine_matrix(encoded["test"]["image_global"], encoded["test"]["sentence"]),
    (1, 5, 10),
    retrieval.text_groups(texts),
  )
  assert full["global/i2t_R@5"] == pytest.approx(expected["i2t_R@5"])
  other = retrieval.recall_at_k(
    retrieval.cosine_matrix(
      encoded["test"]["image_global"], encoded["test"]["sentence_other_pooling"]
    ),
    (1, 5, 10),
    retrieval.text_groups(texts),
  )
  assert full["global_other_pooling/t2i_R@10"] == pytest.approx(other["t2i_R@10"])


def _random_variables(model, image, tokens):
  """Variables of `model` with seeded random weights (unit norms, zero biases and means), made
  without compiling its initialiser: only the encodings' bookkeeping is under test here."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), image, tokens, train=False))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name or "var" in name:
      return np.ones(leaf.shape, leaf.dtype)
    if "bias" in name or "mean" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _tf_dataset(images, texts, studies, views):
  import tensorflow as tf

  return tf.data.Dataset.from_tensor_slices(
    {
      "image": images,
      "text": texts,
      "study_id": studies,
      "view_position": views,
      "dicom_id": [f"d{i:02d}" for i in range(len(texts))],
    }
  )


# ----------------------------------------------------------------------------- same findings


def test_finding_sets_group_cases_by_their_positive_labels_only():
  nan = np.nan
  labels = np.array(
    [
      [1, 0, nan],
      [1, -1, 0],  # uncertain and negative are both "not positive": same set as row 0
      [1, 1, nan],
      [nan, nan, nan],
      [0, 0, 0],  # no positives, like row 3
    ],
    np.float32,
  )
  g = retrieval.finding_set_groups(labels)
  assert g[0] == g[1] and g[3] == g[4]
  assert len({g[0], g[2], g[3]}) == 3


def test_group_chance_equals_enumerating_every_ranking_prefix():
  """Exact chance: over all K-subsets of the N columns as the top K, the share holding a column of
  the query's group, averaged over queries."""
  import itertools

  groups = np.array([0, 0, 1, 2, 2, 2, 3])
  n = len(groups)
  for k in (1, 2, 3, 6, 7, 10):
    subsets = list(itertools.combinations(range(n), min(k, n)))
    expected = np.mean(
      [np.mean([any(groups[j] == groups[i] for j in s) for s in subsets]) for i in range(n)]
    )
    assert retrieval.group_chance_at_k(groups, k) == pytest.approx(expected, abs=1e-12)
  # Every group a singleton: the pair chance K / N.
  assert retrieval.group_chance_at_k(np.arange(50), 10) == pytest.approx(0.2)


def test_same_findings_recall_counts_a_case_with_the_same_findings_as_a_hit():
  """Each image scores highest a text of another case with its findings, never its own: exact
  recall@1 is 0, same-findings recall@1 is 1; chance follows the group sizes."""
  groups = np.array([0, 0, 1, 1, 2, 2])
  scores = np.zeros((6, 6))
  for i in range(6):
    partner = i ^ 1  # the other case of its group
    scores[i, partner] = 1.0
  out = retrieval.recall_at_k(scores, (1,))
  assert out["i2t_R@1"] == 0.0
  same = retrieval.recall_at_k(scores, (1,), groups)
  assert same["i2t_R@1"] == 1.0 and same["t2i_R@1"] == 1.0


def test_evaluator_reports_same_findings_recall_from_the_split_labels(tokenizer, tmp_path):
  config = tiny_config()
  images, texts, studies = make_arrays(8, height=64, width=64)
  labels = np.full((8, 14), np.nan, np.float32)
  labels[:4, 0] = 1.0  # two finding sets of 4 cases each
  labels[4:, 3] = 1.0
  source = inp.ArraySource(
    "toy/test", images=images, texts=texts, study_ids=studies, patient_ids=studies, labels=labels
  )
  unlabelled = inp.ArraySource(
    "toy/bare", images=images, texts=texts, study_ids=studies, patient_ids=studies
  )
  data = DataBundle(
    config=config,
    sources={"test": source, "bare": unlabelled},
    tokenizer=tokenizer,
    tokenizer_dir=str(tmp_path),
    ground_truth={},
  )
  config.evals = ml_collections.ConfigDict(
    {
      "r": dict(
        type="retrieval", split="test", scores=("global",), pool_size=0, same_findings=True
      ),
      "b": dict(
        type="retrieval", split="bare", scores=("global",), pool_size=0, same_findings=True
      ),
      "auto": dict(
        type="retrieval", split="bare", scores=("global",), pool_size=0, same_findings="auto"
      ),
      "auto_labelled": dict(
        type="retrieval", split="test", scores=("global",), pool_size=0, same_findings="auto"
      ),
    }
  )
  by_name = {e.name: e for e in registry.build_evaluators(config)}
  rng = np.random.default_rng(0)
  encoded = {
    "index": np.arange(8),
    "image_global": rng.normal(size=(8, 16)).astype(np.float32),
    "sentence": rng.normal(size=(8, 16)).astype(np.float32),
  }
  out = by_name["r"](encoded, data=data, workdir=str(tmp_path))
  assert out["same_findings/num_sets"] == 2
  assert out["same_findings/chance_R@1"] == pytest.approx(4 / 8)
  assert out["same_findings/chance_R@5"] == pytest.approx(1.0)  # 5 > 8 - 4 others
  assert out["global/same_findings/i2t_R@5"] == 1.0
  assert out["global/same_findings/i2t_R@1"] >= out["global/i2t_R@1"]
  with pytest.raises(ValueError, match=r"config\.evals\.b\.same_findings: split 'bare' has no"):
    by_name["b"](encoded, data=data, workdir=str(tmp_path))
  # "auto" (the default config's): where the split has labels, the same as True; where it has
  # none, the exact-pair recall alone.
  assert by_name["auto_labelled"](encoded, data=data, workdir=str(tmp_path)) == out
  bare = by_name["auto"](encoded, data=data, workdir=str(tmp_path))
  assert not any("same_findings" in key for key in bare)
  assert bare["global/i2t_R@1"] == out["global/i2t_R@1"]
