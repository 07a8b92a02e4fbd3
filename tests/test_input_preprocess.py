"""Tests for `data_pipeline.input.preprocess`: study hash, decode, evaluation view, augmentation
policies (aspect kept, centred crop, rotation and jitter ranges), the native-resolution crop and
nearest rotation of the original release, rotate, MLM masking."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import input as inp
from data_pipeline import tokenizer as tok
from data_pipeline.input import preprocess
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


def test_without_augmentation_image_is_the_centred_square_resized_and_scaled(source, tokenizer):
  batch = next(train(source, tokenizer, augment=False))
  originals = source._images.numpy()[batch["index"]]
  assert originals.shape[1:3] == (56, 48)
  originals = originals[:, 4:52]  # the centred 48 x 48 square of the 56 x 48 toy images
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
  for policy in ("mild", "original"):
    augmented = next(train(src, tokenizer, batch_size=16, augment=policy))["image"]
    assert augmented.min() >= -1 and augmented.max() <= 1
    assert np.allclose(plain, plain[0]), "without augmentation all copies are identical"
    differences = np.abs(augmented - plain).mean(axis=(1, 2, 3))
    assert (differences > 0.01).all(), policy
    assert len({round(float(d), 6) for d in differences}) == 16, "each copy differs"
  # mild rotates after the jitter: its corners are black (-1); the gradient never reaches -1 there.
  mild = next(train(src, tokenizer, batch_size=16, augment=True))["image"]
  assert (mild[:, [0, 0, -1, -1], [0, -1, 0, -1]] == -1).any()


def test_augmentation_components_can_be_switched_off(tokenizer):
  # Square images: a full-side square crop then has one position, the evaluation view's.
  images, texts, _ = make_arrays(8, height=48, width=48)
  src = inp.ArraySource("t", images=images, texts=texts)
  plain = next(train(src, tokenizer, augment=False))
  for jitter_last in (False, True):
    identity = inp.Augmentation(
      max_rotation_degrees=0,
      crop_side_range=(1.0, 1.0),
      max_brightness_delta=0,
      contrast_range=(1.0, 1.0),
      jitter_last=jitter_last,
    )
    neutral = next(train(src, tokenizer, augment=identity))
    np.testing.assert_allclose(neutral["image"], plain["image"], atol=1e-5)


def test_policies_by_name_and_bad_names_named():
  assert preprocess.resolve_augmentation("original") == preprocess.ORIGINAL
  assert preprocess.resolve_augmentation("mild") == preprocess.resolve_augmentation(True)
  assert preprocess.resolve_augmentation("mild") == inp.Augmentation()
  assert preprocess.resolve_augmentation("none") is preprocess.resolve_augmentation(False) is None
  with pytest.raises(ValueError, match="config.data.augment.*strong"):
    preprocess.resolve_augmentation("strong")
  with pytest.raises(ValueError, match="crop_side_range"):
    inp.Augmentation(crop_side_range=(0.5, 1.2))


def test_original_policy_is_the_releases():
  """JoImTeR/dataset_mimic_pretrain.py: RandomRotation(15), ColorJitter(brightness=[0.5, 1.8],
  contrast=[0.5, 1.8]) after a full-size crop, in ColorJitter's random order."""
  original = preprocess.ORIGINAL
  assert original.max_rotation_degrees == 15.0
  assert original.brightness_factor_range == original.contrast_range == (0.5, 1.8)
  assert original.max_brightness_delta == 0.0 and original.crop_side_range == (1.0, 1.0)
  assert original.jitter_last


# --- geometry: aspect kept, centred evaluation crop, bounded rotation ----------------------------

# A portrait "X-ray": 128 wide, 192 tall, a disc of radius 16 at its centre on a mid-grey field.
TALL_HEIGHT, TALL_WIDTH, DISC_RADIUS = 192, 128, 16
OUT = 64


def _tall_disc() -> np.ndarray:
  yy, xx = np.mgrid[:TALL_HEIGHT, :TALL_WIDTH]
  disc = (yy - (TALL_HEIGHT - 1) / 2) ** 2 + (xx - (TALL_WIDTH - 1) / 2) ** 2 <= DISC_RADIUS**2
  return np.where(disc, 230, 90).astype(np.uint8)[..., None]


def _disc_moments(image: np.ndarray) -> tuple[float, float, float]:
  """(row variance, column variance, area) of the pixels brighter than the mid-level 0.6."""
  rows, cols = np.nonzero(image[..., 0] > 0.6)
  return rows.var(), cols.var(), float(rows.size)


def _views(augmentation, count: int = 12) -> list[np.ndarray]:
  image = tf.constant(_tall_disc())
  keys = [tf.constant([7, i], tf.int64) for i in range(count)]
  return [preprocess.augment_image(image, OUT, k, augmentation).numpy() for k in keys]


def test_evaluation_view_is_the_centred_square_and_deterministic():
  image = _tall_disc()
  view = preprocess.eval_view(tf.constant(image), OUT).numpy()
  np.testing.assert_array_equal(view, preprocess.eval_view(tf.constant(image), OUT).numpy())
  top = (TALL_HEIGHT - TALL_WIDTH) // 2
  centre = image[top : top + TALL_WIDTH].astype(np.float32) / 255.0
  expected = tf.image.resize(centre, [OUT, OUT], antialias=True).numpy()
  np.testing.assert_allclose(view, np.clip(expected, 0, 1), atol=1e-6)
  # The disc stays a centred circle: equal spreads, centre at the middle, radius scaled by 64/128.
  rows, cols = np.nonzero(view[..., 0] > 0.6)
  assert abs(rows.mean() - (OUT - 1) / 2) < 0.5 and abs(cols.mean() - (OUT - 1) / 2) < 0.5
  row_var, col_var, area = _disc_moments(view)
  assert abs(row_var / col_var - 1) < 0.05
  assert abs(area / (math.pi * (DISC_RADIUS * OUT / TALL_WIDTH) ** 2) - 1) < 0.1


@pytest.mark.parametrize("policy", ["mild", "original"])
def test_training_views_keep_proportions(policy):
  """Crops, rotations and jitter never stretch: the disc stays a circle in every view (a stretch
  by the portrait's 3:2 would make its variances differ by 2.25x)."""
  settings = preprocess.resolve_augmentation(policy)
  settings = dataclasses.replace(
    settings, max_brightness_delta=0, brightness_factor_range=(1, 1), contrast_range=(1, 1)
  )
  ratios = []
  for view in _views(settings):
    row_var, col_var, area = _disc_moments(view)
    ratios.append(row_var / col_var)
    # The crop spans 0.89..1 of the shorter side (128 px): radius 16 -> 8..9 px at 64 px.
    assert math.pi * 7.5**2 < area < math.pi * 9.5**2, (policy, area)
  np.testing.assert_allclose(ratios, 1.0, atol=0.08)


def _bar_angle(image: np.ndarray) -> float:
  """Orientation in degrees of the bright bar, from its second moments."""
  rows, cols = np.nonzero(image[..., 0] > 0.5)
  y, x = rows - rows.mean(), cols - cols.mean()
  return math.degrees(0.5 * math.atan2(2 * (x * y).mean(), (x * x).mean() - (y * y).mean()))


def test_rotation_is_uniform_within_15_degrees():
  bar = np.zeros((OUT, OUT, 1), np.uint8)
  bar[OUT // 2 - 2 : OUT // 2 + 2, 8:-8] = 255
  settings = dataclasses.replace(
    preprocess.ORIGINAL, brightness_factor_range=(1, 1), contrast_range=(1, 1)
  )
  keys = [tf.constant([3, i], tf.int64) for i in range(40)]
  angles = np.abs(
    [_bar_angle(preprocess.augment_image(tf.constant(bar), OUT, k, settings).numpy()) for k in keys]
  )
  assert angles.max() <= 15.5 and angles.max() > 12 and angles.min() < 3, angles


def test_original_jitter_factors_span_half_to_1_8():
  """Brightness multiplies the mean and contrast the spread about it: on a checkerboard that never
  clips, mean and spread ratios recover both factors; each lies in [0.5, 1.8] and spans it."""
  board = np.where(np.indices((OUT, OUT)).sum(0) % 2 == 0, 0.2, 0.4)[..., None]
  image = tf.constant(np.round(board * 255).astype(np.uint8))
  before = image.numpy() / 255.0
  settings = dataclasses.replace(preprocess.ORIGINAL, max_rotation_degrees=0)
  brightness, contrast = [], []
  for i in range(200):
    view = preprocess.augment_image(image, OUT, tf.constant([5, i], tf.int64), settings).numpy()
    assert view.min() > 0 and view.max() < 1, "the checkerboard must not clip"
    brightness.append(view.mean() / before.mean())
    contrast.append(view.std() / before.std() / brightness[-1])
  for factors in (np.array(brightness), np.array(contrast)):
    assert factors.min() >= 0.5 - 1e-3 and factors.max() <= 1.8 + 1e-3
    assert factors.min() < 0.6 and factors.max() > 1.7


def test_phantom_sized_squares_are_resized_as_before(tokenizer):
  """The square synthetic set sees the same evaluation images as a plain resize."""
  images = np.random.default_rng(1).integers(0, 256, (4, 48, 48, 1), dtype=np.uint8)
  for image in images:
    view = preprocess.eval_view(tf.constant(image), IMAGE_SIZE).numpy()
    plain = tf.image.resize(image.astype(np.float32) / 255.0, [IMAGE_SIZE] * 2, antialias=True)
    np.testing.assert_allclose(view, np.clip(plain.numpy(), 0, 1), atol=1e-6)


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


# --- the release's crop at native resolution and its nearest-pixel rotation ----------------------


def _distinct_image(height: int, width: int, seed: int = 0) -> np.ndarray:
  """uint8 [H, W, 1] with values in 1..255 (0 is the fill), all over the place."""
  return np.random.default_rng(seed).integers(1, 256, (height, width, 1), dtype=np.uint8)


def _as_float(image: np.ndarray) -> np.ndarray:
  return tf.image.convert_image_dtype(tf.constant(image), tf.float32).numpy()


def _window_position(view: np.ndarray, padded: np.ndarray) -> tuple[int, int]:
  """The (top, left) of the one window of `padded` that `view` equals pixel for pixel."""
  size = view.shape[0]
  hits = [
    (top, left)
    for top in range(padded.shape[0] - size + 1)
    for left in range(padded.shape[1] - size + 1)
    if np.array_equal(padded[top : top + size, left : left + size], view)
  ]
  assert len(hits) == 1, hits
  return hits[0]


NATIVE_STILL = dataclasses.replace(
  preprocess.ORIGINAL_NATIVE,
  max_rotation_degrees=0,
  brightness_factor_range=(1, 1),
  contrast_range=(1, 1),
)


@pytest.mark.parametrize("shape", [(50, 70), (20, 40)])
def test_native_crop_is_a_pixel_exact_window_padded_as_torchvision(shape):
  """RandomCrop(32, pad_if_needed=True): a side shorter than 32 is padded by 32 - n on both ends
  (20 rows -> 12 + 20 + 12); the view is then one window of the image, nothing resampled."""
  image = _distinct_image(*shape)
  pad = max(32 - shape[0], 0)
  padded = np.pad(_as_float(image), [(pad, pad), (0, 0), (0, 0)])
  positions = set()
  for i in range(12):
    view = preprocess.augment_image(
      tf.constant(image), 32, tf.constant([11, i], tf.int64), NATIVE_STILL
    ).numpy()
    assert view.shape == (32, 32, 1)
    positions.add(_window_position(view, padded))
  assert len(positions) > 6, "the window's place is drawn anew for every key"
  if pad:
    assert {top for top, _ in positions} != {pad}, "windows reach into the padding"


def test_native_evaluation_view_is_torchvisions_centre_crop():
  """CenterCrop(32): the window at round((n - 32) / 2), halves to even (71 wide: 19.5 -> 20); a side
  shorter than 32 is padded (32 - n) // 2 before and the rest after."""
  image = _distinct_image(50, 71)
  view = preprocess.eval_view(tf.constant(image), 32, native_crop=True).numpy()
  np.testing.assert_array_equal(view, _as_float(image)[9:41, 20:52])
  small = _distinct_image(21, 41, seed=1)
  view = preprocess.eval_view(tf.constant(small), 32, native_crop=True).numpy()
  expected = np.pad(_as_float(small), [(5, 6), (0, 0), (0, 0)])[:, 4:36]
  np.testing.assert_array_equal(view, expected)


def test_native_policy_by_name_and_evaluation_follow_it(tokenizer):
  assert preprocess.resolve_augmentation("original_native") == preprocess.ORIGINAL_NATIVE
  assert preprocess.ORIGINAL_NATIVE.native_crop and not preprocess.ORIGINAL.native_crop
  assert preprocess.uses_native_crop("original_native")
  assert not any(map(preprocess.uses_native_crop, ("original", "mild", "none", True, False)))
  with pytest.raises(ValueError, match="native_crop.*crop_side_range"):
    inp.Augmentation(native_crop=True)  # the mild crop fraction has no meaning there
  image = _distinct_image(50, 71)
  process = preprocess.make_processor(
    tokenizer=tokenizer,
    image_size=32,
    seed=0,
    process_index=0,
    augmentation=None,
    masking=None,
    extra_keys=(),
    eval_native_crop=True,
  )
  example = {"image": tf.constant(image), "text": tf.constant("a"), "study_id": tf.constant("s")}
  row = process({**example, "index": tf.constant(0)}, tf.constant(0))
  np.testing.assert_allclose(row["image"].numpy(), _as_float(image)[9:41, 20:52] * 2 - 1, atol=0)


def test_nearest_rotation_only_copies_input_pixels():
  """RandomRotation's default: every output pixel is an input pixel or the fill 0; bilinear
  rotation blends neighbours into values the input does not have."""
  image = _as_float(_distinct_image(40, 30))
  values = set(image.ravel().tolist())
  for angle in (0.05, -0.2, 0.26):
    nearest = inp.rotate(tf.constant(image), tf.constant(angle), "nearest").numpy()
    assert set(nearest.ravel().tolist()) <= values | {0.0}
    assert np.mean(nearest > 0) > 0.7
    bilinear = inp.rotate(tf.constant(image), tf.constant(angle), "bilinear").numpy()
    assert not set(bilinear.ravel().tolist()) <= values | {0.0}
  with pytest.raises(ValueError, match="interpolation.*cubic"):
    inp.rotate(tf.constant(image), tf.constant(0.1), "cubic")


def test_original_policies_rotate_with_nearest_pixels_at_native_scale():
  assert preprocess.ORIGINAL.rotation_interpolation == "nearest"
  assert inp.Augmentation().rotation_interpolation == "bilinear"  # the default config's mild
  image = _distinct_image(48, 64)
  values = set(_as_float(image).ravel().tolist()) | {0.0}
  settings = dataclasses.replace(NATIVE_STILL, max_rotation_degrees=15)
  for i in range(4):
    view = preprocess.augment_image(tf.constant(image), 32, tf.constant([2, i], tf.int64), settings)
    assert set(view.numpy().ravel().tolist()) <= values
