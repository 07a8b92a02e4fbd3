"""Per-host tf.data input pipelines: contract examples in, contract batches (numpy) out.

See docs/contracts.md for both tables. Each host reads only its share of a split, so the hosts of a
pod together see every example; the trainer turns the host batches into global arrays
(jimte.batches).

Determinism. Every random choice (which example comes next, crop, rotation, jitter, MLM masks) is a
stateless function of (seed, process_index, position in this host's stream), so batches do not
depend on tf.data's parallelism and a run resumed at `start_step` sees exactly the batches an
uninterrupted run would have seen. Sources with random access (in-memory arrays, generators) are
shuffled perfectly and resumed for free; streamed sources (TFDS, arbitrary tf.data) use a seeded
per-epoch shuffle buffer and resume by skipping the raw (still encoded) records of the current
epoch.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from data_pipeline.tokenizer import BOS_ID, EOS_ID, FIRST_ORDINARY_ID, MASK_ID, PAD_ID, Tokenizer

# Study-id hash range: int32-representable and non-negative, so -1 can mark padding.
STUDY_HASH_BUCKETS = 2**31 - 1
PADDING_INDEX = -1
DEFAULT_SHUFFLE_BUFFER = 2048

# Keys a source may provide; 'index' (int64, position within the split) is added by the source
# itself.
REQUIRED_EXAMPLE_KEYS = ("image", "text", "study_id")
OPTIONAL_EXAMPLE_KEYS = ("patient_id", "labels")


# ==================================================================================================
# Sources
# ==================================================================================================


class Source(abc.ABC):
  """A split of contract examples that each host can read its own share of."""

  def __init__(self, name: str, num_examples: int):
    if num_examples < 0:
      raise ValueError(f"num_examples must be non-negative, got {num_examples}")
    self.name = name
    self.num_examples = int(num_examples)

  @abc.abstractmethod
  def as_dataset(self, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """This host's share in a fixed order: contract examples plus 'index' (int64, within the
    split)."""

  def num_host_examples(self, process_index: int, process_count: int) -> int:
    """How many examples `as_dataset(process_index, process_count)` yields (strided shares)."""
    _check_process(process_index, process_count)
    return len(range(process_index, self.num_examples, process_count))

  def max_host_examples(self, process_count: int) -> int:
    """The largest host share: what every host pads its evaluation up to."""
    return max(self.num_host_examples(i, process_count) for i in range(process_count))

  def __repr__(self) -> str:
    return f"{type(self).__name__}(name={self.name!r}, num_examples={self.num_examples})"


class RandomAccessSource(Source):
  """A source that can fetch example i in-graph; host p owns indices p, p + P, p + 2P, ..."""

  @abc.abstractmethod
  def get_example(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    """Example `index` (int64 scalar tensor) as a dict of tensors, without 'index'."""

  def host_index(self, local_index: tf.Tensor, process_index: int, process_count: int) -> tf.Tensor:
    """Split index of the `local_index`-th example of a host's share."""
    return process_index + local_index * process_count

  def as_dataset(self, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    _check_process(process_index, process_count)
    indices = tf.data.Dataset.range(process_index, self.num_examples, process_count)
    return indices.map(
      self.indexed_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )

  def indexed_example(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    """Example `index` with its "index" feature added (int64)."""
    example = dict(self.get_example(index))
    example["index"] = tf.cast(index, tf.int64)
    return example


class ArraySource(RandomAccessSource):
  """In-memory examples: images as one uint8 array [N, H, W, 1] or a list of [H_i, W_i, 1] arrays.

  Same-size images live in one TensorFlow tensor and are gathered in-graph (parallel, no GIL);
  differently sized ones are fetched through a Python call. `study_id` defaults to the index.
  """

  def __init__(
    self,
    name: str,
    *,
    images: np.ndarray | Sequence[np.ndarray],
    texts: Sequence[str],
    study_ids: Sequence[str] | None = None,
    patient_ids: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
  ):
    num = len(texts)
    super().__init__(name, num)
    study_ids = [str(i) for i in range(num)] if study_ids is None else list(study_ids)
    columns = {"study_id": study_ids, "patient_id": patient_ids, "labels": labels, "images": images}
    for key, column in columns.items():
      if column is not None and len(column) != num:
        raise ValueError(f"{key} has {len(column)} entries, texts has {num}")
    self._uniform = isinstance(images, np.ndarray) and images.ndim == 4
    for image in images if not self._uniform else images[:1]:
      _check_image_array(image)
    self._images = (
      tf.constant(images, tf.uint8) if self._uniform else [np.asarray(im) for im in images]
    )
    self._texts = tf.constant(list(texts), tf.string)
    self._study_ids = tf.constant(study_ids, tf.string)
    self._patient_ids = None if patient_ids is None else tf.constant(list(patient_ids), tf.string)
    self._labels = None if labels is None else tf.constant(np.asarray(labels, np.float32))

  def get_example(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    if self._uniform:
      image = tf.gather(self._images, index)
    else:
      image = tf.numpy_function(lambda i: self._images[int(i)], [index], tf.uint8, stateful=False)
      image = tf.ensure_shape(image, [None, None, 1])
    example = {
      "image": image,
      "text": tf.gather(self._texts, index),
      "study_id": tf.gather(self._study_ids, index),
    }
    if self._patient_ids is not None:
      example["patient_id"] = tf.gather(self._patient_ids, index)
    if self._labels is not None:
      example["labels"] = tf.gather(self._labels, index)
    return example


class GeneratorSource(RandomAccessSource):
  """Examples computed on demand by `make_example(i) -> dict` (numpy image, str texts/ids).

  `make_example` must be a pure function of i (e.g. a seeded synthetic generator): the pipeline
  calls it in any order and in parallel. Example 0 is built once here to learn the optional keys.
  """

  def __init__(
    self, name: str, num_examples: int, make_example: Callable[[int], Mapping[str, Any]]
  ):
    super().__init__(name, num_examples)
    self._make_example = make_example
    probe = make_example(0) if num_examples else {}
    missing = [k for k in REQUIRED_EXAMPLE_KEYS if k not in probe] if num_examples else []
    if missing:
      raise ValueError(f"make_example(0) lacks the contract keys {missing}")
    self._keys = list(REQUIRED_EXAMPLE_KEYS) + [k for k in OPTIONAL_EXAMPLE_KEYS if k in probe]
    if num_examples:
      _check_image_array(np.asarray(probe["image"]))
    self._label_shape = np.asarray(probe["labels"]).shape if "labels" in probe else None

  _DTYPES = {
    "image": tf.uint8,
    "text": tf.string,
    "study_id": tf.string,
    "patient_id": tf.string,
    "labels": tf.float32,
  }

  def _python_example(self, index: np.ndarray) -> list[Any]:
    example = self._make_example(int(index))
    values = []
    for key in self._keys:
      value = example[key]
      if self._DTYPES[key] == tf.string:
        values.append(value.encode("utf-8") if isinstance(value, str) else bytes(value))
      else:
        values.append(np.asarray(value, self._DTYPES[key].as_numpy_dtype))
    return values

  def get_example(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    values = tf.numpy_function(
      self._python_example, [index], [self._DTYPES[k] for k in self._keys], stateful=False
    )
    example = dict(zip(self._keys, values, strict=True))
    example["image"] = tf.ensure_shape(example["image"], [None, None, 1])
    for key in ("text", "study_id", "patient_id"):
      if key in example:
        example[key] = tf.ensure_shape(example[key], [])
    if "labels" in example:
      example["labels"] = tf.ensure_shape(example["labels"], self._label_shape)
    return example


class DatasetSource(Source):
  """Wraps a tf.data.Dataset of contract examples (dicts); hosts take strided shares with `shard`.

  `num_examples` is needed when the dataset's cardinality is unknown. Every host reads (and drops)
  the other hosts' elements, so use it for modest data; a TFDS directory scales better.
  """

  def __init__(
    self, dataset: tf.data.Dataset, name: str = "dataset", num_examples: int | None = None
  ):
    cardinality = int(dataset.cardinality())
    if num_examples is None:
      if cardinality < 0:
        raise ValueError("the dataset's cardinality is unknown or infinite: pass num_examples")
      num_examples = cardinality
    elif cardinality >= 0 and cardinality != num_examples:
      raise ValueError(f"num_examples={num_examples} but the dataset holds {cardinality}")
    super().__init__(name, num_examples)
    _check_element_spec(dataset.element_spec)
    self._dataset = dataset

  def as_dataset(self, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    _check_process(process_index, process_count)

    def add_index(index, example):
      return {**example, "index": index}

    # Enumerate before sharding, so 'index' is the position within the whole split.
    return self._dataset.enumerate().shard(process_count, process_index).map(add_index)


class TfdsSource(Source):
  """A split of a built TFDS dataset (`tfds.builder_from_directory`); hosts read contiguous slices.

  Host p of P reads examples [floor(N p / P), floor(N (p + 1) / P)) in the split's stored order (as
  `tfds.even_splits` would), with images left encoded so shuffle buffers hold compressed bytes; the
  input pipeline decodes them after shuffling.
  """

  def __init__(self, data_dir: str, split: str = "train", name: str | None = None):
    import tensorflow_datasets as tfds  # Imported here: it is slow to import and optional.

    self._tfds = tfds
    self._builder = tfds.builder_from_directory(data_dir)
    self._split = split
    info = self._builder.info
    super().__init__(name or f"{info.name}/{split}", info.splits[split].num_examples)

  def _host_range(self, process_index: int, process_count: int) -> tuple[int, int]:
    _check_process(process_index, process_count)
    start = self.num_examples * process_index // process_count
    end = self.num_examples * (process_index + 1) // process_count
    return start, end

  def num_host_examples(self, process_index: int, process_count: int) -> int:
    start, end = self._host_range(process_index, process_count)
    return end - start

  def as_dataset(self, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    tfds = self._tfds
    start, end = self._host_range(process_index, process_count)
    decoders = None
    if isinstance(self._builder.info.features["image"], tfds.features.Image):
      decoders = {"image": tfds.decode.SkipDecoding()}
    dataset = self._builder.as_dataset(
      split=f"{self._split}[{start}:{end}]",
      shuffle_files=False,
      decoders=decoders,
      # One file at a time: the stored order, so 'index' below is the index within the split.
      read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=False),
    )

    def add_index(offset, example):
      return {**example, "index": tf.cast(offset, tf.int64)}

    return dataset.enumerate(start=start).map(add_index)


def as_source(source: Source | tf.data.Dataset, num_examples: int | None = None) -> Source:
  """Accepts a Source or a tf.data.Dataset of contract examples (wrapped in a DatasetSource)."""
  if isinstance(source, Source):
    if num_examples is not None and num_examples != source.num_examples:
      raise ValueError(f"num_examples={num_examples} but {source} holds {source.num_examples}")
    return source
  if isinstance(source, tf.data.Dataset):
    return DatasetSource(source, num_examples=num_examples)
  raise TypeError(f"expected a Source or a tf.data.Dataset, got {type(source).__name__}")


# ==================================================================================================
# Per-example processing
# ==================================================================================================


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
_ORDER_STREAM = 1
_EXAMPLE_STREAM = 2


def _rng_key(seed: int, process_index: int, stream: int, data: tf.Tensor) -> tf.Tensor:
  """Stateless RNG key [2] for (seed, host, stream, data): data is an epoch or a stream position."""
  key = tf.random.experimental.stateless_fold_in(
    tf.constant([seed, process_index], tf.int64), stream
  )
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def _make_processor(
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
    key = _rng_key(seed, process_index, _EXAMPLE_STREAM, position)
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


# ==================================================================================================
# Pipelines
# ==================================================================================================


def _options() -> tf.data.Options:
  """Order-preserving parallelism: batches are the same however many threads tf.data uses."""
  options = tf.data.Options()
  options.deterministic = True
  return options


def _resolve(
  tokenizer: Tokenizer,
  max_len: int | None,
  augment: bool | Augmentation,
  mlm: bool | MlmMasking,
) -> tuple[Tokenizer, Augmentation | None, MlmMasking | None]:
  """Applies a max_len override and turns the True/False shorthands into settings (or None =
  off)."""
  if max_len is not None and max_len != tokenizer.max_len:
    tokenizer = Tokenizer(tokenizer.model_proto, max_len=max_len)
  augmentation = Augmentation() if augment is True else (augment or None)
  masking = MlmMasking() if mlm is True else (mlm or None)
  return tokenizer, augmentation, masking


def _shuffle_seed(seed: int, process_index: int, epoch: tf.Tensor) -> tf.Tensor:
  """An int64 seed for epoch `epoch` of one host's stream (a tensor: computed inside flat_map)."""
  text = tf.strings.format("shuffle-{}-{}-{}", (seed, process_index, epoch))
  return tf.strings.to_hash_bucket_fast(text, 2**62)


def _global_order_stream(
  source: RandomAccessSource,
  *,
  seed: int,
  process_index: int,
  process_count: int,
  batch_size: int,
  start_step: int,
) -> tf.data.Dataset:
  """Endless stream of (example, global position): host p's slice of one global shuffle.

  The global batch at step s holds global stream positions [s B P, (s + 1) B P) (B = host batch, P =
  hosts); host p takes rows [p B, (p + 1) B) of it. Positions index a fresh permutation of the whole
  split each epoch. So the global batches, and every random choice keyed by global position, are
  the same whatever the number of hosts: a run can resume on another host count, and a 2 x 4 run
  reproduces a 1 x 8 run.
  """
  num = source.num_examples
  if num == 0:
    raise ValueError(f"{source} has no examples")
  global_batch = batch_size * process_count

  def fetch(host_position):
    step, row = host_position // batch_size, host_position % batch_size
    position = step * global_batch + process_index * batch_size + row
    epoch, local = position // num, position % num
    key = _rng_key(seed, 0, _ORDER_STREAM, epoch)
    index = tf.random.experimental.index_shuffle(local, key, tf.constant(num - 1, tf.int64))
    return source.indexed_example(tf.cast(index, tf.int64)), position

  positions = tf.data.Dataset.counter(start=start_step * batch_size)
  return positions.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _train_stream(
  source: Source,
  *,
  seed: int,
  process_index: int,
  process_count: int,
  start_position: int,
  shuffle_buffer_size: int,
) -> tf.data.Dataset:
  """Endless shuffled stream of (example, position) for this host, from `start_position` on."""
  host_size = source.num_host_examples(process_index, process_count)
  if host_size == 0:
    raise ValueError(f"host {process_index} of {process_count} has no examples of {source}")
  positions = tf.data.Dataset.counter(start=start_position)

  if isinstance(source, RandomAccessSource):
    # A fresh permutation of the host's share each epoch, computed per position: O(1) memory.
    def fetch(position):
      epoch, local = position // host_size, position % host_size
      key = _rng_key(seed, process_index, _ORDER_STREAM, epoch)
      local = tf.random.experimental.index_shuffle(local, key, tf.constant(host_size - 1, tf.int64))
      index = tf.cast(source.host_index(local, process_index, process_count), tf.int64)
      return source.indexed_example(index), position

    return positions.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  base = source.as_dataset(process_index, process_count)
  first_epoch, offset = divmod(start_position, host_size)
  buffer = min(shuffle_buffer_size, host_size)

  def epoch_dataset(epoch):
    return base.shuffle(
      buffer, seed=_shuffle_seed(seed, process_index, epoch), reshuffle_each_iteration=False
    )

  stream = tf.data.Dataset.counter(start=first_epoch).flat_map(epoch_dataset)
  # Resuming mid-epoch reads (but does not decode or augment) the epoch's first `offset` records.
  stream = stream.skip(offset)
  return tf.data.Dataset.zip(stream, positions)


def make_train_dataset(
  source: Source | tf.data.Dataset,
  *,
  tokenizer: Tokenizer,
  image_size: int,
  batch_size: int,
  seed: int,
  max_len: int | None = None,
  augment: bool | Augmentation = True,
  mlm: bool | MlmMasking = False,
  process_index: int = 0,
  process_count: int = 1,
  start_step: int = 0,
  shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
  extra_keys: Sequence[str] = (),
  global_order: bool = False,
) -> tf.data.Dataset:
  """Endless per-host training batches (dicts of tensors, leading dim `batch_size`) per the
  contract.

  `batch_size` is this host's batch. `start_step` resumes: the first batch is the one an
  uninterrupted run would produce at that step. `shuffle_buffer_size` only matters for streamed
  sources (memory = buffer x encoded example size). `extra_keys` copies numeric example features
  (e.g. 'labels'). `global_order` (random-access sources only) makes the global batches independent
  of the number of hosts: each host takes its slice of one global shuffle (see
  `_global_order_stream`).
  """
  _check_process(process_index, process_count)
  if batch_size <= 0 or start_step < 0:
    raise ValueError(f"need batch_size > 0 and start_step >= 0, got {batch_size}, {start_step}")
  source = as_source(source)
  tokenizer, augmentation, masking = _resolve(tokenizer, max_len, augment, mlm)
  if global_order:
    if not isinstance(source, RandomAccessSource):
      raise ValueError(
        f"global_order needs a random-access source (arrays, generator), got {source}"
      )
    stream = _global_order_stream(
      source,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      batch_size=batch_size,
      start_step=start_step,
    )
  else:
    stream = _train_stream(
      source,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      start_position=start_step * batch_size,
      shuffle_buffer_size=shuffle_buffer_size,
    )
  process = _make_processor(
    tokenizer=tokenizer,
    image_size=image_size,
    seed=seed,
    process_index=0 if global_order else process_index,  # global positions key the randomness
    augmentation=augmentation,
    masking=masking,
    extra_keys=extra_keys,
  )
  dataset = stream.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return dataset.with_options(_options())


def make_train_iterator(
  source: Source | tf.data.Dataset, **kwargs
) -> Iterator[dict[str, np.ndarray]]:
  """`make_train_dataset` as an endless iterator of numpy batch dicts (same keyword arguments)."""
  return make_train_dataset(source, **kwargs).as_numpy_iterator()


@dataclasses.dataclass
class EvalBatches:
  """One pass over a split for this host: `num_batches` numpy batches (equal on every host)."""

  dataset: tf.data.Dataset
  num_batches: int
  num_examples: int  # Real (valid) examples on this host.

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.dataset.as_numpy_iterator()

  def __len__(self) -> int:
    return self.num_batches


def _padding_row(spec: Mapping[str, tf.TensorSpec], max_len: int) -> dict[str, tf.Tensor]:
  """A batch row marked invalid: black image, text '[BOS] [EOS]' (one valid word, so no empty
  softmax)."""
  empty_text = tf.concat([[BOS_ID, EOS_ID], tf.fill([max_len - 2], PAD_ID)], axis=0)
  row = {}
  for key, value_spec in spec.items():
    if key in ("tokens", "mlm_tokens"):
      row[key] = empty_text
    elif key in ("study_index", "index"):
      row[key] = tf.constant(PADDING_INDEX, tf.int32)
    elif key == "valid":
      row[key] = tf.constant(False)
    else:
      row[key] = tf.zeros(value_spec.shape, value_spec.dtype)
  return row


def make_eval_batches(
  source: Source | tf.data.Dataset,
  *,
  tokenizer: Tokenizer,
  image_size: int,
  batch_size: int,
  num_examples: int | None = None,
  max_len: int | None = None,
  mlm: bool | MlmMasking = False,
  seed: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  extra_keys: Sequence[str] = (),
) -> EvalBatches:
  """Every example of the split exactly once across hosts, in order, without augmentation.

  Each host pads its share with `valid=False` rows up to ceil(largest share / batch_size) batches,
  so all hosts run the same number of steps. MLM masks (when on) are seeded by (seed, example
  index). `num_examples` is needed only for a tf.data.Dataset of unknown cardinality.
  """
  _check_process(process_index, process_count)
  source = as_source(source, num_examples)
  tokenizer, _, masking = _resolve(tokenizer, max_len, False, mlm)
  host_size = source.num_host_examples(process_index, process_count)
  num_batches = -(-source.max_host_examples(process_count) // batch_size)
  process = _make_processor(
    tokenizer=tokenizer,
    image_size=image_size,
    seed=seed,
    process_index=0,
    augmentation=None,
    masking=masking,
    extra_keys=extra_keys,
  )
  dataset = source.as_dataset(process_index, process_count).map(
    lambda example: process(example, example["index"]),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  padding = tf.data.Dataset.from_tensors(_padding_row(dataset.element_spec, tokenizer.max_len))
  dataset = dataset.concatenate(padding.repeat(num_batches * batch_size - host_size))
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return EvalBatches(dataset.with_options(_options()), num_batches, host_size)


# ==================================================================================================
# Checks
# ==================================================================================================


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"need 0 <= process_index < process_count, got {process_index} of {process_count}"
    )


def _check_image_array(image: np.ndarray) -> None:
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 1:
    raise ValueError(f"images must be uint8 [H, W, 1], got {image.dtype} {image.shape}")


def _check_element_spec(spec: Any) -> None:
  if not isinstance(spec, Mapping):
    raise TypeError(f"examples must be dicts, got {spec}")
  missing = [k for k in REQUIRED_EXAMPLE_KEYS if k not in spec]
  if missing:
    raise ValueError(f"examples lack the contract keys {missing}; they have {sorted(spec)}")
  image = spec["image"]
  if image.dtype == tf.uint8:
    if image.shape.rank != 3 or image.shape[-1] != 1:
      raise ValueError(f"image must be uint8 [H, W, 1], got {image.shape}")
  elif image.dtype != tf.string:
    raise ValueError(f"image must be uint8 [H, W, 1] or encoded bytes, got {image.dtype}")
  for key in ("text", "study_id"):
    if spec[key].dtype != tf.string or spec[key].shape.rank != 0:
      raise ValueError(f"{key} must be a scalar string, got {spec[key]}")
