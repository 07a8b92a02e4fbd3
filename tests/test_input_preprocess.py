"""Tests for `data_pipeline.input.preprocess`: study hash, decode/resize/augment/rotate, MLM
masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import input as inp
from data_pipeline import tokenizer as tok
from tests._input_data import (
  IMAGE_SIZE,
  make_arrays,
  make_texts,
  train,
)


def test_study_index_is_a_stable_hash_shared_by_one_study(tokenizer):
  images, texts, _ = make_arrays(6)
  study_ids = ["a", "a", "b", "c", "c", "c"]
  src = inp.ArraySource("s", images=images, texts=texts, study_ids=study_ids)
  batch = next(
    iter(inp.make_eval_batches(src, tokenizer=tokenizer, image_size=IMAGE_SIZE, batch_size=6))
  )
  by_index = dict(zip(batch["index"].tolist(), batch["study_index"].tolist(), strict=True))
  assert by_index[0] == by_index[1] and by_index[3] == by_index[4] == by_index[5]
  assert len({by_index[0], by_index[2], by_index[3]}) == 3
  assert all(0 <= v < 2**31 - 1 for v in by_index.values())
  # FarmHash fingerprint: the value is the same on every host, run and TF version.
  expected = tf.strings.to_hash_bucket_fast(["a"], 2**31 - 1).numpy()[0]
  assert by_index[0] == expected == inp.study_index(tf.constant("a")).numpy()


# --- images ---------------------------------------------------------------------------------------


def test_without_augmentation_image_is_resized_and_scaled(source, tokenizer):
  batch = next(train(source, tokenizer, augment=False))
  originals = source._images.numpy()[batch["index"]]
  expected = tf.image.resize(originals.astype(np.float32) / 255.0, [IMAGE_SIZE] * 2, antialias=True)
  expected = np.clip(expected.numpy(), 0, 1) * 2 - 1
  np.testing.assert_allclose(batch["image"], expected, atol=1e-5)


def test_augmentation_changes_images_and_keeps_range(tokenizer):
  # A smooth image (a gradient with a bright disc) so augmentation differences are not noise.
  yy, xx = np.mgrid[:64, :64]
  image = (xx * 2 + ((yy - 30) ** 2 + (xx - 34) ** 2 < 200) * 100).astype(np.uint8)[..., None]
  src = inp.ArraySource(
    "smooth", images=np.repeat(image[None], 16, axis=0), texts=make_texts(16, 1)
  )
  plain = next(train(src, tokenizer, batch_size=16, augment=False))["image"]
  augmented = next(train(src, tokenizer, batch_size=16))["image"]
  assert augmented.min() >= -1 and augmented.max() <= 1
  assert np.allclose(plain, plain[0]), "without augmentation all copies are identical"
  differences = np.abs(augmented - plain).mean(axis=(1, 2, 3))
  assert (differences > 0.01).all()
  assert len({round(float(d), 6) for d in differences}) == 16, "each copy is augmented differently"
  # Rotation fills some corners with black (-1); the unaugmented gradient never reaches -1 there.
  assert (augmented[:, [0, 0, -1, -1], [0, -1, 0, -1]] == -1).any()


def test_augmentation_components_can_be_switched_off(tokenizer):
  images, texts, _ = make_arrays(8)
  src = inp.ArraySource("t", images=images, texts=texts)
  identity = inp.Augmentation(
    max_rotation_degrees=0,
    crop_area_range=(1.0, 1.0),
    crop_aspect_ratio_range=(48 / 56, 48 / 56),
    max_brightness_delta=0,
    contrast_range=(1.0, 1.0),
  )
  plain = next(train(src, tokenizer, augment=False))
  neutral = next(train(src, tokenizer, augment=identity))
  np.testing.assert_allclose(neutral["image"], plain["image"], atol=1e-5)


def test_rotate_by_quarter_turn_matches_numpy():
  image = np.random.default_rng(0).random((9, 9, 1)).astype(np.float32)
  rotated = inp.rotate(tf.constant(image), tf.constant(math.pi / 2)).numpy()
  candidates = [np.rot90(image, k, axes=(0, 1)) for k in (1, 3)]
  assert min(np.abs(rotated - c).max() for c in candidates) < 1e-4


def test_encoded_png_images_are_decoded(tokenizer):
  images, texts, study_ids = make_arrays(8)
  encoded = [tf.io.encode_png(im).numpy() for im in images]
  ds = tf.data.Dataset.from_tensor_slices({"image": encoded, "text": texts, "study_id": study_ids})
  raw = tf.data.Dataset.from_tensor_slices({"image": images, "text": texts, "study_id": study_ids})
  kwargs = dict(tokenizer=tokenizer, image_size=IMAGE_SIZE, batch_size=8)
  np.testing.assert_array_equal(
    next(iter(inp.make_eval_batches(ds, **kwargs)))["image"],
    next(iter(inp.make_eval_batches(raw, **kwargs)))["image"],
  )


# --- MLM ------------------------------------------------------------------------------------------


def test_mlm_masking_statistics(tokenizer):
  count = 1024
  texts = make_texts(count, seed=9, min_words=8, max_words=40)
  images = np.zeros((count, 8, 8, 1), np.uint8)
  src = inp.ArraySource("mlm", images=images, texts=texts)
  batch = next(train(src, tokenizer, batch_size=count, mlm=True, augment=False))
  tokens, masked, targets, weights = (
    batch[k] for k in ("tokens", "mlm_tokens", "mlm_targets", "mlm_weights")
  )
  selected = weights == 1.0
  assert set(np.unique(weights)) <= {0.0, 1.0}

  ordinary = tokens >= tok.FIRST_ORDINARY_ID
  assert not (selected & ~ordinary).any(), "PAD/BOS/EOS/special tokens must never be selected"
  rate = selected.sum() / ordinary.sum()
  assert abs(rate - 0.15) < 0.01, rate
  # Per row: round(15% of the ordinary tokens), at least one.
  per_row = np.maximum(1, np.round(0.15 * ordinary.sum(axis=1)))
  np.testing.assert_array_equal(selected.sum(axis=1), per_row)

  np.testing.assert_array_equal(targets, np.where(selected, tokens, 0))
  np.testing.assert_array_equal(masked[~selected], tokens[~selected])
  chosen, original = masked[selected], tokens[selected]
  to_mask = (chosen == tok.MASK_ID).mean()
  unchanged = (chosen == original).mean()
  to_random = 1 - to_mask - unchanged
  n = selected.sum()
  assert n > 3000
  for observed, expected in ((to_mask, 0.8), (to_random, 0.1), (unchanged, 0.1)):
    assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 0.01, (
      observed,
      expected,
    )
  replaced = chosen[(chosen != tok.MASK_ID) & (chosen != original)]
  assert (replaced >= tok.FIRST_ORDINARY_ID).all() and (replaced < tokenizer.vocab_size).all()


def test_mlm_handles_short_and_empty_texts(tokenizer):
  texts = ["", "heart.", "normal heart", ""]
  src = inp.ArraySource("short", images=np.zeros((4, 8, 8, 1), np.uint8), texts=texts)
  batch = next(
    iter(inp.make_eval_batches(src, tokenizer=tokenizer, image_size=8, batch_size=4, mlm=True))
  )
  ordinary = (batch["tokens"] >= tok.FIRST_ORDINARY_ID).sum(axis=1)
  selected = batch["mlm_weights"].sum(axis=1)
  np.testing.assert_array_equal(selected, np.minimum(ordinary, 1))
  assert ordinary[1] >= 1 and selected[0] == selected[3] == 0


def test_mlm_masking_rates_are_configurable(tokenizer):
  texts = make_texts(256, seed=4, min_words=20, max_words=40)
  src = inp.ArraySource("cfg", images=np.zeros((256, 8, 8, 1), np.uint8), texts=texts)
  all_masked = inp.MlmMasking(select_rate=0.5, mask_fraction=1.0, random_fraction=0.0)
  batch = next(train(src, tokenizer, batch_size=256, mlm=all_masked, augment=False, image_size=8))
  selected = batch["mlm_weights"] == 1
  assert (batch["mlm_tokens"][selected] == tok.MASK_ID).all()
  assert abs(selected.sum() / (batch["tokens"] >= tok.FIRST_ORDINARY_ID).sum() - 0.5) < 0.01
  with pytest.raises(ValueError):
    inp.MlmMasking(mask_fraction=0.95, random_fraction=0.1)
