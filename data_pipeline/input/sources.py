"""Sources: a split of contract examples that each host reads its own share of.

Random-access sources (in-memory arrays, generators) fetch example i in-graph, so the pipelines can
shuffle them perfectly and resume for free; streamed sources (an arbitrary tf.data.Dataset, a TFDS
directory) are read in order. See docs/contracts.md for the example keys.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

# Keys a source may provide; 'index' (int64, position within the split) is added by the source
# itself.
REQUIRED_EXAMPLE_KEYS = ("image", "text", "study_id")
OPTIONAL_EXAMPLE_KEYS = ("patient_id", "labels")


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
    check_process(process_index, process_count)
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
    check_process(process_index, process_count)
    indices = tf.data.Dataset.range(process_index, self.num_examples, process_count)
    return indices.map(
      self.indexed_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )

  @tf.autograph.experimental.do_not_convert
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
    check_process(process_index, process_count)

    @tf.autograph.experimental.do_not_convert
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
    check_process(process_index, process_count)
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

    @tf.autograph.experimental.do_not_convert
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


# Checks of arguments and of what a source yields.


def check_process(process_index: int, process_count: int) -> None:
  """Raises `ValueError` unless `0 <= process_index < process_count` (a valid host of a pod)."""
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
