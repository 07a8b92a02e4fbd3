"""Recall@K and ranks of the retrieval evaluator on matrices whose answers are known."""

import numpy as np
import pytest

from jimte.evaluate import retrieval


def test_perfect_scores_give_full_recall():
  scores = np.eye(7) + 0.01 * np.random.default_rng(0).standard_normal((7, 7))
  out = retrieval.recall_at_k(scores, ks=(1, 5))
  assert out["i2t_R@1"] == 1.0 and out["t2i_R@1"] == 1.0
  assert out["chance_R@5"] == pytest.approx(5 / 7)


def test_ranks_both_directions():
  # Row 0: its text is 3rd (two scores higher). Columns: text 0 is 2nd, text 1 3rd, text 2 2nd.
  scores = np.array([[0.1, 0.5, 0.9], [0.0, 0.4, 0.2], [0.3, 0.6, 0.8]])
  i2t, t2i = retrieval.ranks_of_diagonal(scores)
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


def test_attention_figure_words_skip_padding_and_stopwords():
  from jimte.evaluate import attention_png

  pieces = ["\u2581the", "\u2581effu", "sion", "\u2581left", "</s>", "<pad>", "<pad>"]
  match = np.array([0.9, 0.5, 0.8, 0.7, 0.95, -np.inf, -np.inf])
  words = attention_png.pick_words(pieces, match, count=5)
  assert [(w, g) for w, g, _ in words] == [("effusion", [1, 2]), ("left", [3])]
  assert words[0][2] == pytest.approx(0.8)
