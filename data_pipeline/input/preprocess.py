"""Per-example processing: decode, view or augment, tokenize, MLM-mask -> one contract batch row.

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


AUGMENT_POLICIES = ("original_native", "original", "mild", "none")
ROTATION_INTERPOLATIONS = ("bilinear", "nearest")


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training-time image augmentation: square crop, rotation, intensity jitter; never stretches.

  The crop is a square whose side is a uniform fraction in `crop_side_range` of the image's shorter
  side, taken at a uniform position and scaled to the output size (one scale factor for both axes,
  so proportions are kept). Rotation is uniform in +-`max_rotation_degrees` (uncovered pixels 0).
  Brightness adds a uniform delta in +-`max_brightness_delta` and multiplies by a uniform factor in
  `brightness_factor_range` (images in [0, 1]); contrast scales the deviation from the mean by a
  uniform factor in `contrast_range`.

  `jitter_last` picks the order. True (the original's torchvision pipeline): rotate the scaled
  image, crop, then brightness and contrast in a random order (as `ColorJitter`), the rotated
  corners included. False: crop, jitter, then rotate the crop, so its corners stay black.

  `rotation_interpolation`: "bilinear", or "nearest" (torchvision `RandomRotation`'s default: every
  output pixel is an input pixel or 0).

  `native_crop` (the release's `RandomCrop(S, pad_if_needed=True)`): instead of the scaled square,
  an S x S window of the image at its stored resolution, nothing resampled but the rotation; a side
  shorter than S is first padded with 0 by S - n on both ends, as torchvision pads. Its evaluation
  view is `eval_view(..., native_crop=True)` (`CenterCrop(S)`). `crop_side_range` must stay (1, 1).
  """

  max_rotation_degrees: float = 15.0
  crop_side_range: tuple[float, float] = (math.sqrt(0.8), 1.0)
  max_brightness_delta: float = 0.1
  brightness_factor_range: tuple[float, float] = (1.0, 1.0)
  contrast_range: tuple[float, float] = (0.8, 1.2)
  jitter_last: bool = False
  rotation_interpolation: str = "bilinear"
  native_crop: bool = False

  def __post_init__(self):
    low, high = self.crop_side_range
    if not 0 < low <= high <= 1:
      raise ValueError(f"crop_side_range must satisfy 0 < low <= high <= 1, got {(low, high)}")
    if self.native_crop and (low, high) != (1.0, 1.0):
      raise ValueError(
        f"crop_side_range {(low, high)} applies to the scaled crop; native_crop takes a fixed "
        "image_size window, so it needs crop_side_range=(1.0, 1.0)"
      )
    if self.rotation_interpolation not in ROTATION_INTERPOLATIONS:
      raise ValueError(
        f"rotation_interpolation must be one of {ROTATION_INTERPOLATIONS}, "
        f"got {self.rotation_interpolation!r}"
      )
    for name in ("brightness_factor_range", "contrast_range"):
      low, high = getattr(self, name)
      if not 0 <= low <= high:
        raise ValueError(f"{name} must satisfy 0 <= low <= high, got {(low, high)}")


# JoImTeR/dataset_mimic_pretrain.py: RandomRotation(15) (nearest pixels), RandomCrop(2048,
# pad_if_needed=True), ColorJitter(brightness and contrast factors in [0.5, 1.8]); saturation is a
# no-op on grayscale. ORIGINAL_NATIVE crops at the stored resolution as the release does (MIMIC:
# `tfds_config=frontal_native`); ORIGINAL first scales the shorter side to S, so its crop spans the
# whole shorter side of records stored at a maximum side.
ORIGINAL = Augmentation(
  max_rotation_degrees=15.0,
  crop_side_range=(1.0, 1.0),
  max_brightness_delta=0.0,
  brightness_factor_range=(0.5, 1.8),
  contrast_range=(0.5, 1.8),
  jitter_last=True,
  rotation_interpolation="nearest",
)
ORIGINAL_NATIVE = dataclasses.replace(ORIGINAL, native_crop=True)
MILD = Augmentation()


def resolve_augmentation(value: Augmentation | str | bool | None) -> Augmentation | None:
  """`config.data.augment` -> settings: a policy name (original | mild | none), True (= mild),
  False or None (= none), or an `Augmentation` as it is."""
  if isinstance(value, Augmentation) or value is None:
    return value
  if isinstance(value, bool):
    return MILD if value else None
  policies = {
    "original_native": ORIGINAL_NATIVE,
    "original": ORIGINAL,
    "mild": MILD,
    "none": None,
    "": None,
  }
  if isinstance(value, str) and value in policies:
    return policies[value]
  raise ValueError(
    f"config.data.augment: unknown policy {value!r} (expected one of {AUGMENT_POLICIES}, a bool "
    "or an Augmentation)"
  )


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


def _resize(image: tf.Tensor, height: tf.Tensor | int, width: tf.Tensor | int) -> tf.Tensor:
  """float32 [h, w, 1] in [0, 1] -> [height, width, 1], antialiased (downscaling never aliases)."""
  image = tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)
  return tf.clip_by_value(image, 0.0, 1.0)


def _to_float(image: tf.Tensor) -> tf.Tensor:
  return tf.image.convert_image_dtype(image, tf.float32)


def uses_native_crop(value: Augmentation | str | bool | None) -> bool:
  """Whether `config.data.augment` crops at native resolution, so that evaluation must take the
  native centre window too (`eval_view(..., native_crop=True)`)."""
  augmentation = resolve_augmentation(value)
  return augmentation is not None and augmentation.native_crop


def _round_half_even_half(length: tf.Tensor) -> tf.Tensor:
  """Python's round(length / 2) for an int32 length (halves to even), as torchvision's centre crop
  places its window."""
  half = length // 2
  return half + (length % 2) * (half % 2)


def _native_centre_window(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """torchvision `CenterCrop(S)`: pad a side shorter than S with 0 ((S - n) // 2 before, the rest
  after), then the S x S window at round((n - S) / 2). Pixels are copied, never resampled."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  pad_rows, pad_cols = tf.maximum(image_size - height, 0), tf.maximum(image_size - width, 0)
  image = tf.pad(
    image,
    [[pad_rows // 2, pad_rows - pad_rows // 2], [pad_cols // 2, pad_cols - pad_cols // 2], [0, 0]],
  )
  top = _round_half_even_half(tf.shape(image)[0] - image_size)
  left = _round_half_even_half(tf.shape(image)[1] - image_size)
  return image[top:, left:][:image_size, :image_size]


def eval_view(image: tf.Tensor, image_size: int, native_crop: bool = False) -> tf.Tensor:
  """uint8 [H, W, 1] -> float32 [S, S, 1] in [0, 1]: the centred square of side min(H, W), scaled
  to S, or with `native_crop` the centred S x S window at the stored resolution (padded with 0
  where the image is smaller). Deterministic, and never stretches."""
  if native_crop:
    return tf.ensure_shape(
      _native_centre_window(_to_float(image), image_size), [image_size, image_size, 1]
    )
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  side = tf.minimum(height, width)
  image = image[(height - side) // 2 :, (width - side) // 2 :][:side, :side]
  return _resize(_to_float(image), image_size, image_size)


def _uniform(key: tf.Tensor, value_range: tuple[float, float]) -> tf.Tensor:
  return tf.random.stateless_uniform([], key, minval=value_range[0], maxval=value_range[1])


def _offset(key: tf.Tensor, room: tf.Tensor) -> tf.Tensor:
  """A uniform integer offset in [0, room]."""
  return tf.random.stateless_uniform([], key, minval=0, maxval=room + 1, dtype=tf.int32)


def rotate(image: tf.Tensor, angle: tf.Tensor, interpolation: str = "bilinear") -> tf.Tensor:
  """Rotates a float [H, W, C] image by `angle` radians about its centre; uncovered corners become
  0. `interpolation`: "bilinear" or "nearest" (each output pixel an input pixel or 0)."""
  if interpolation not in ROTATION_INTERPOLATIONS:
    raise ValueError(
      f"interpolation must be one of {ROTATION_INTERPOLATIONS}, got {interpolation!r}"
    )
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
    interpolation=interpolation.upper(),
    fill_mode="CONSTANT",
  )
  return rotated[0]


def _jitter(image: tf.Tensor, key: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
  """Brightness then contrast, or in a random order when `jitter_last` (as `ColorJitter`)."""
  add_key, factor_key, contrast_key, order_key = tf.unstack(
    tf.random.experimental.stateless_split(key, num=4)
  )

  def brightness(x: tf.Tensor) -> tf.Tensor:
    if augmentation.max_brightness_delta > 0:
      x = tf.image.stateless_random_brightness(x, augmentation.max_brightness_delta, add_key)
    if augmentation.brightness_factor_range != (1.0, 1.0):
      x = x * _uniform(factor_key, augmentation.brightness_factor_range)
    return tf.clip_by_value(x, 0.0, 1.0)

  def contrast(x: tf.Tensor) -> tf.Tensor:
    if augmentation.contrast_range != (1.0, 1.0):
      x = tf.image.stateless_random_contrast(x, *augmentation.contrast_range, contrast_key)
    return tf.clip_by_value(x, 0.0, 1.0)

  if not augmentation.jitter_last:
    return contrast(brightness(image))
  brightness_first = tf.random.stateless_uniform([], order_key) < 0.5
  return tf.cond(
    brightness_first, lambda: contrast(brightness(image)), lambda: brightness(contrast(image))
  )


def _rotate_randomly(image: tf.Tensor, key: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
  if augmentation.max_rotation_degrees <= 0:
    return image
  max_angle = augmentation.max_rotation_degrees * math.pi / 180
  angle = tf.random.stateless_uniform([], key, minval=-max_angle, maxval=max_angle)
  rotated = rotate(image, angle, augmentation.rotation_interpolation)
  return tf.clip_by_value(rotated, 0.0, 1.0)


def _random_native_window(
  image: tf.Tensor, image_size: int, row_key: tf.Tensor, col_key: tf.Tensor
) -> tf.Tensor:
  """torchvision `RandomCrop(S, pad_if_needed=True)`: a side n < S is padded with 0 by S - n on both
  ends (what its `F.pad(img, [S - n, 0])` does), then a uniform S x S window."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  pad_rows, pad_cols = tf.maximum(image_size - height, 0), tf.maximum(image_size - width, 0)
  image = tf.pad(image, [[pad_rows, pad_rows], [pad_cols, pad_cols], [0, 0]])
  top = _offset(row_key, tf.shape(image)[0] - image_size)
  left = _offset(col_key, tf.shape(image)[1] - image_size)
  return image[top:, left:][:image_size, :image_size]


def augment_image(
  image: tf.Tensor, image_size: int, key: tf.Tensor, augmentation: Augmentation
) -> tf.Tensor:
  """uint8 [H, W, 1] -> float32 [S, S, 1] in [0, 1]: square crop scaled to S (or an S x S window at
  native resolution, `native_crop`), jitter, rotation, in the order `augmentation.jitter_last`
  names (seeded by key). Proportions are always kept."""
  side_key, row_key, col_key, angle_key, jitter_key = tf.unstack(
    tf.random.experimental.stateless_split(key, num=5)
  )
  if augmentation.native_crop:
    image = _to_float(image)
    if augmentation.jitter_last:  # the release: rotate the whole image, crop, jitter
      image = _rotate_randomly(image, angle_key, augmentation)
      image = _random_native_window(image, image_size, row_key, col_key)
      return _jitter(image, jitter_key, augmentation)
    image = _jitter(
      _random_native_window(image, image_size, row_key, col_key), jitter_key, augmentation
    )
    return _rotate_randomly(image, angle_key, augmentation)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  fraction = _uniform(side_key, augmentation.crop_side_range)
  if augmentation.jitter_last:
    # The original's order: rotate the whole image, crop, jitter. Scaled first (the shorter side to
    # S / fraction), so the rotation runs at the output resolution.
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    target = tf.cast(tf.math.ceil(image_size / fraction), tf.int32)
    scale = tf.cast(target, tf.float32) / shorter
    scaled = [
      tf.maximum(target, tf.cast(tf.round(tf.cast(n, tf.float32) * scale), tf.int32))
      for n in (height, width)
    ]
    image = _rotate_randomly(_resize(_to_float(image), *scaled), angle_key, augmentation)
    top = _offset(row_key, scaled[0] - image_size)
    left = _offset(col_key, scaled[1] - image_size)
    image = image[top:, left:][:image_size, :image_size]
    return _jitter(image, jitter_key, augmentation)
  side = tf.cast(tf.round(fraction * tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
  side = tf.maximum(side, 1)
  top, left = _offset(row_key, height - side), _offset(col_key, width - side)
  image = _resize(_to_float(image[top:, left:][:side, :side]), image_size, image_size)
  return _rotate_randomly(_jitter(image, jitter_key, augmentation), angle_key, augmentation)


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
  augmentation: Augmentation | str | bool | None,
  masking: MlmMasking | None,
  extra_keys: Sequence[str],
  eval_native_crop: bool = False,
) -> Callable[[dict[str, tf.Tensor], tf.Tensor], dict[str, tf.Tensor]]:
  """Builds the map function: (example, rng position) -> one batch row as in the contract.

  `augmentation`: settings, a policy name (`AUGMENT_POLICIES`) or a bool (see
  `resolve_augmentation`); none means the evaluation view (centred square, scaled; with
  `eval_native_crop` the centred window at native resolution, for runs that train with
  `native_crop`, see `uses_native_crop`).
  """
  augmentation = resolve_augmentation(augmentation)

  @tf.autograph.experimental.do_not_convert
  def process(example: dict[str, tf.Tensor], position: tf.Tensor) -> dict[str, tf.Tensor]:
    key = rng_key(seed, process_index, EXAMPLE_STREAM, position)
    image_key, mlm_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
    image = decode_image(example["image"])
    if augmentation is None:
      image = eval_view(image, image_size, native_crop=eval_native_crop)
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
