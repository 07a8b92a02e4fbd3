"""Toy data shared by the input-pipeline tests: report-like texts, images, sources, batch helpers.

Plain functions (no fixtures), so the per-host subprocess scripts can import them too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from data_pipeline import input as inp
from data_pipeline import tokenizer as tok

REPO = Path(__file__).resolve().parents[1]
WORDS = [
  "the",
  "heart",
  "size",
  "is",
  "normal",
  "lungs",
  "are",
  "clear",
  "no",
  "pleural",
  "effusion",
  "or",
  "pneumothorax",
  "mild",
  "cardiomegaly",
  "left",
  "lower",
  "lobe",
  "opacity",
  "consistent",
  "with",
  "atelectasis",
  "right",
  "upper",
  "XXXX",
  "stable",
  "granuloma",
  "degenerative",
  "changes",
  "of",
  "the",
  "thoracic",
  "spine",
  "small",
  "nodule",
  "mediastinal",
  "contours",
  "within",
  "limits",
]
IMAGE_SIZE = 32
MAX_LEN = 48
KEYS = {"image", "tokens", "study_index", "index", "valid"}
MLM_KEYS = {"mlm_tokens", "mlm_targets", "mlm_weights"}


def make_texts(count: int, seed: int, min_words: int = 4, max_words: int = 40) -> list[str]:
  rng = np.random.default_rng(seed)
  return [
    " ".join(rng.choice(WORDS, rng.integers(min_words, max_words + 1))) + "." for _ in range(count)
  ]


def make_arrays(count: int, seed: int = 0, height: int = 56, width: int = 48):
  """Random uint8 images, report-like texts, and study ids shared by consecutive pairs of images."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count, height, width, 1), dtype=np.uint8)
  return images, make_texts(count, seed), [f"study-{i // 2}" for i in range(count)]


def toy_tokenizer() -> tok.Tokenizer:
  """A small SentencePiece model trained on `make_texts` reports."""
  return tok.Tokenizer.train(
    make_texts(400, seed=123), max_len=MAX_LEN, vocab_size=400, num_threads=1
  )


def toy_source() -> inp.ArraySource:
  """40 examples of `make_arrays`, study ids shared by pairs."""
  images, texts, study_ids = make_arrays(40)
  return inp.ArraySource("toy", images=images, texts=texts, study_ids=study_ids)


def dataset_of(count: int, seed: int = 0) -> tf.data.Dataset:
  images, texts, study_ids = make_arrays(count, seed)
  return tf.data.Dataset.from_tensor_slices({"image": images, "text": texts, "study_id": study_ids})


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(left, right):
  assert len(left) == len(right)
  for a, b in zip(left, right, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def train(source, tokenizer, **kwargs):
  defaults = dict(tokenizer=tokenizer, image_size=IMAGE_SIZE, batch_size=8, seed=0)
  return inp.make_train_iterator(source, **{**defaults, **kwargs})


def source_texts(source: inp.ArraySource) -> list[str]:
  return [t.decode() for t in source._texts.numpy()]
