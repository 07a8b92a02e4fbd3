"""Per-example processing: decode, resize or augment, tokenize, MLM-mask -> one contract batch row.

Every random choice is a stateless function of (seed, host, stream, position), keyed by `rng_key`,
so a row does not depend on tf.data's parallelism or on where a run was resumed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import tensorflow as tf

from data_pipeline.tokenizer import FIRST_ORDINARY_ID, MASK_ID, Tokenizer

# Study-id hash range: int32-representable and non-negative, so -1 can mark padding.
STUDY_HASH_BUCKETS = 2**31 - 1
PADDING_INDEX = -1


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training-time image augmentation, in the spirit of JoImTeRNet: crop, rotation, intensity
  jitter.

  The crop covers `crop_area_range` of the image with an aspect ratio in `crop_aspect_ratio_range`,
  and is resized to the output size; rotation is uniform in +-`max_rotation_degrees` (corners filled
  black); brightness adds a uniform delta in +-`max_brightness_delta` (images in [0, 1]); contrast
  scales the deviation from the mean by a factor in `contrast_range`.
  """

  max_rotation_degrees: float = 15.0
  crop_area_range: tuple[float, float] = (0.8, 1.0)
  crop_aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  max_brightness_delta: float = 0.1
  contrast_range: tuple[float, float] = (0.8, 1.2)


@dataclasses.dataclass(frozen=True)
class MlmMasking:
  """BERT-style masking: select `select_rate` of the ordinary tokens (round(rate * n), at least
  one); of those, `mask_fraction` become [MASK], `random_fraction` a random ordinary token, the rest
  stay."""

  select_rate: float = 0.15
  mask_fraction: float = 0.8
  random_fraction: float = 0.1

  def __post_init__(self):
    if not 0 < self.select_rate <= 1:
      raise ValueError(f"select_rate must be in (0, 1], got {self.select_rate}")
    if (
      self.mask_fraction < 0
      or self.random_fraction < 0
      or self.mask_fraction + self.random_fraction > 1
    ):
      raise ValueError("mask_fraction and random_fraction must be >= 0 and sum to at most 1")


def decode_image(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 1] as is; encoded bytes (PNG/JPEG, as TFDS stores them) decoded to uint8 [H, W,
  1]."""
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=1, dtype=tf.uint8, expand_animations=False)
  if image.dtype != tf.uint8:
    raise TypeError(f"images must be uint8 or encoded bytes, got {image.dtype}")
  return tf.ensure_shape(image, [None, None, 1])


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """uint8 [h, w, 1] -> float32 [S, S, 1] in [0, 1], antialiased so downscaling does not alias."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
  return tf.clip_by_value(image, 0.0, 1.0)


def rotate(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
  """Rotates a float [S, S, C] image by `angle` radians about its centre; uncovered corners become
  0."""
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  cos, sin = tf.cos(angle), tf.sin(angle)
  center_x, center_y = (width - 1) / 2, (height - 1) / 2
  # The transform maps each output pixel (x, y) to the input point it samples from.
  transform = tf.stack(
    [
      cos,
      -sin,
      center_x - cos * center_x + sin * center_y,
      sin,
      cos,
      center_y - sin * center_x - cos * center_y,
      0.0,
      0.0,
    ]
  )
  rotated = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=transform[None],
    output_shape=tf.shape(image)[:2],
    fill_value=0.0,
    interpolation="BILINEAR",
    fill_mode="CONSTANT",
  )
  return rotated[0]


def augment_image(
  image: tf.Tensor, image_size: int, key: tf.Tensor, augmentation: Augmentation
) -> tf.Tensor:
  """uint8 [H, W, 1] -> float32 [S, S, 1] in [0, 1]: random crop, resize, jitter, rotation (seeded
  by key)."""
  crop_key, brightness_key, contrast_key, angle_key = tf.unstack(
    tf.random.experimental.stateless_split(key, num=4)
  )
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.shape(image),
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=crop_key,
    min_object_covered=0.0,
    aspect_ratio_range=augmentation.crop_aspect_ratio_range,
    area_range=augmentation.crop_area_range,
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  image = _resize(tf.slice(image, begin, size), image_size)
  if augmentation.max_brightness_delta > 0:
    image = tf.image.stateless_random_brightness(
      image, augmentation.max_brightness_delta, brightness_key
    )
  if augmentation.contrast_range != (1.0, 1.0):
    image = tf.image.stateless_random_contrast(image, *augmentation.contrast_range, contrast_key)
  # Jitter before rotating, so the black corners stay black.
  image = tf.clip_by_value(image, 0.0, 1.0)
  if augmentation.max_rotation_degrees > 0:
    max_angle = augmentation.max_rotation_degrees * math.pi / 180
    angle = tf.random.stateless_uniform([], angle_key, minval=-max_angle, maxval=max_angle)
    image = rotate(image, angle)
  return tf.clip_by_value(image, 0.0, 1.0)


def mask_tokens(
  tokens: tf.Tensor, key: tf.Tensor, vocab_size: int, masking: MlmMasking
) -> dict[str, tf.Tensor]:
  """MLM inputs for one sequence [L]: mlm_tokens, mlm_targets (0 off-target), mlm_weights (1
  on-target).

  Candidates are the ordinary tokens (never PAD/UNK/BOS/EOS/MASK). Exactly round(rate * n) of the n
  candidates are chosen (at least one when n > 0), so short reports still train the MLM head.
  """
  select_key, action_key, random_key = tf.unstack(
    tf.random.experimental.stateless_split(key, num=3)
  )
  length = tf.shape(tokens)[0]
  candidates = tokens >= FIRST_ORDINARY_ID
  num_candidates = tf.reduce_sum(tf.cast(candidates, tf.int32))
  num_selected = tf.cast(
    tf.round(masking.select_rate * tf.cast(num_candidates, tf.float32)), tf.int32
  )
  num_selected = tf.minimum(tf.maximum(num_selected, 1), num_candidates)
  # Random ranks among candidates (non-candidates rank last): the lowest num_selected are chosen.
  scores = tf.where(candidates, tf.random.stateless_uniform([length], select_key), 2.0)
  ranks = tf.argsort(tf.argsort(scores, stable=True), stable=True)
  selected = ranks < num_selected
  action = tf.random.stateless_uniform([length], action_key)
  random_tokens = tf.random.stateless_uniform(
    [length], random_key, minval=FIRST_ORDINARY_ID, maxval=vocab_size, dtype=tf.int32
  )
  to_mask = selected & (action < masking.mask_fraction)
  to_random = selected & ~to_mask & (action < masking.mask_fraction + masking.random_fraction)
  mlm_tokens = tf.where(to_mask, MASK_ID, tf.where(to_random, random_tokens, tokens))
  return {
    "mlm_tokens": mlm_tokens,
    "mlm_targets": tf.where(selected, tokens, 0),
    "mlm_weights": tf.cast(selected, tf.float32),
  }


def study_index(study_id: tf.Tensor) -> tf.Tensor:
  """Stable int32 hash of a study id (same on every host and run), in [0, 2^31 - 2]."""
  return tf.cast(tf.strings.to_hash_bucket_fast(study_id, STUDY_HASH_BUCKETS), tf.int32)


# Separate random streams for the example order and for per-example randomness.
ORDER_STREAM = 1
EXAMPLE_STREAM = 2


def rng_key(seed: int, process_index: int, stream: int, data: tf.Tensor) -> tf.Tensor:
  """Stateless RNG key [2] for (seed, host, stream, data): data is an epoch or a stream position."""
  key = tf.random.experimental.stateless_fold_in(
    tf.constant([seed, process_index], tf.int64), stream
  )
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def make_processor(
  *,
  tokenizer: Tokenizer,
  image_size: int,
  seed: int,
  process_index: int,
  augmentation: Augmentation | None,
  masking: MlmMasking | None,
  extra_keys: Sequence[str],
) -> Callable[[dict[str, tf.Tensor], tf.Tensor], dict[str, tf.Tensor]]:
  """Builds the map function: (example, rng position) -> one batch row as in the contract."""

  def process(example: dict[str, tf.Tensor], position: tf.Tensor) -> dict[str, tf.Tensor]:
    key = rng_key(seed, process_index, EXAMPLE_STREAM, position)
    image_key, mlm_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
    image = decode_image(example["image"])
    if augmentation is None:
      image = _resize(image, image_size)
    else:
      image = augment_image(image, image_size, image_key, augmentation)
    tokens = tokenizer.tokenize(example["text"])
    row = {
      "image": tf.ensure_shape(image * 2.0 - 1.0, [image_size, image_size, 1]),
      "tokens": tokens,
      "study_index": study_index(example["study_id"]),
      "index": tf.cast(example["index"], tf.int32),
      "valid": tf.constant(True),
    }
    if masking is not None:
      row.update(mask_tokens(tokens, mlm_key, tokenizer.vocab_size, masking))
    for name in extra_keys:
      row[name] = example[name]
    return row

  return process
