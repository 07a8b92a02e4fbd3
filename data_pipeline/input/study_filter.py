"""One frontal image per study: a split restricted so that every study (one report) is scored once.

Two images of one study share a report, so retrieval over all images has tied text columns and
counts each report twice. The original release scores one image per study; here the choice is
deterministic: among a study's frontal images, the lowest image id (`dicom_id` or `image_id`, the
example index where a split has neither). `read_study_metadata` reads a split's ids, texts and
views once without decoding an image; `one_frontal_per_study` picks the examples;
`SubsetSource` is the split restricted to them, each example keeping its `index` within the split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from data_pipeline.input.sources import (
  DatasetSource,
  RandomAccessSource,
  Source,
  TfdsSource,
  check_process,
)

VIEW_KEYS = ("view_position", "view")  # MIMIC-CXR's ViewPosition; the covid set's view column
IMAGE_ID_KEYS = ("dicom_id", "image_id")  # MIMIC-CXR's dicom_id; Open-i's image id
FRONTAL_VIEWS = ("PA", "AP")  # a view is frontal when its first word is one of these


@dataclasses.dataclass(frozen=True)
class StudyMetadata:
  """Per-example metadata of a split, in index order (string arrays hold Python `str`)."""

  index: np.ndarray  # int64 [N], the example index within the split, ascending
  study_id: np.ndarray  # [N] str
  text: np.ndarray  # [N] str, the report
  view: np.ndarray  # [N] str, '' where the split records no view
  image_id: np.ndarray  # [N] str, '' where the split records no image id
  labels: np.ndarray | None = None  # float32 [N, C] where the split has labels, else None


@dataclasses.dataclass(frozen=True)
class StudySelection:
  """The examples kept by `one_frontal_per_study` and the count of each kind dropped."""

  indices: np.ndarray  # int64, the kept example indices, ascending
  num_examples: int  # examples in the split
  dropped_same_study: int  # frontal images of a study that kept another one
  dropped_not_frontal: int  # images whose view is not frontal
  studies_without_frontal: int  # studies with no frontal image (none of their images kept)

  @property
  def num_dropped(self) -> int:
    return self.num_examples - len(self.indices)


def _string_key(spec, keys: tuple[str, ...], source: Source) -> str | None:
  """The first of `keys` that the examples carry, checked to be a scalar string."""
  for key in keys:
    if key in spec:
      if spec[key].dtype != tf.string or spec[key].shape.rank != 0:
        raise ValueError(f"{source}: example key {key!r} must be a scalar string, got {spec[key]}")
      return key
  return None


def read_study_metadata(source: Source, batch_size: int = 1024) -> StudyMetadata:
  """Reads index, study id, report text, view and image id of every example of `source` (one pass
  in host order 0 of 1; images are read but never decoded)."""
  dataset = source.as_dataset(0, 1)
  spec = dataset.element_spec
  view_key = _string_key(spec, VIEW_KEYS, source)
  image_id_key = _string_key(spec, IMAGE_ID_KEYS, source)

  @tf.autograph.experimental.do_not_convert
  def pick(example):
    empty = tf.constant("", tf.string)
    return {
      "index": tf.cast(example["index"], tf.int64),
      "study_id": example["study_id"],
      "text": example["text"],
      "view": example[view_key] if view_key else empty,
      "image_id": example[image_id_key] if image_id_key else empty,
      **({"labels": example["labels"]} if "labels" in spec else {}),
    }

  keys = (
    "index",
    "study_id",
    "text",
    "view",
    "image_id",
    *(("labels",) if "labels" in spec else ()),
  )
  columns: dict[str, list] = {k: [] for k in keys}
  picked = dataset.map(pick, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  for batch in picked.batch(batch_size).as_numpy_iterator():
    for key, values in batch.items():
      columns[key].extend(list(values) if key == "labels" else values.tolist())
  index = np.asarray(columns["index"], np.int64)
  if len(index) != source.num_examples:
    raise ValueError(f"{source}: read {len(index)} examples, expected {source.num_examples}")
  order = np.argsort(index, kind="stable")

  def strings(key):
    return np.array([v.decode("utf-8") for v in columns[key]], dtype=object)[order]

  return StudyMetadata(
    index=index[order],
    study_id=strings("study_id"),
    text=strings("text"),
    view=strings("view"),
    image_id=strings("image_id"),
    labels=np.asarray(columns["labels"], np.float32)[order] if "labels" in columns else None,
  )


def is_frontal(views: np.ndarray) -> np.ndarray:
  """True where a view is frontal (first word PA or AP, any case) or unrecorded ('': the contract's
  `image` is a frontal X-ray)."""
  first = [str(v).strip().upper().split()[:1] for v in views]
  return np.array([not w or w[0] in FRONTAL_VIEWS for w in first], dtype=bool)


def one_frontal_per_study(metadata: StudyMetadata) -> StudySelection:
  """Keeps, per study, the frontal image with the lowest (image id, index); drops the rest."""
  frontal = is_frontal(metadata.view)
  best: dict[str, tuple[str, int]] = {}
  for study, image_id, index, keep in zip(
    metadata.study_id, metadata.image_id, metadata.index, frontal, strict=True
  ):
    if keep:
      key = (str(image_id), int(index))
      if study not in best or key < best[study]:
        best[study] = key
  kept = np.array(sorted(index for _, index in best.values()), np.int64)
  num_frontal = int(frontal.sum())
  return StudySelection(
    indices=kept,
    num_examples=len(metadata.index),
    dropped_same_study=num_frontal - len(kept),
    dropped_not_frontal=len(frontal) - num_frontal,
    studies_without_frontal=len(set(metadata.study_id.tolist())) - len(best),
  )


def host_indices(source: Source, process_index: int, process_count: int) -> np.ndarray:
  """The example indices host `process_index` of `process_count` reads from `source`, ascending."""
  check_process(process_index, process_count)
  if isinstance(source, SubsetSource):
    return source.host_indices(process_index, process_count)
  if isinstance(source, TfdsSource):
    start, end = source._host_range(process_index, process_count)  # its one definition
    return np.arange(start, end, dtype=np.int64)
  if isinstance(source, (RandomAccessSource, DatasetSource)):
    return np.arange(process_index, source.num_examples, process_count, dtype=np.int64)
  raise TypeError(f"{source}: unknown host share of a {type(source).__name__}")


class SubsetSource(Source):
  """`base` restricted to the examples `indices`; each keeps its `index` within `base`.

  Host p reads the kept examples of its share of `base` (so hosts stay disjoint and together read
  every kept example): fetched directly from a random-access `base`, filtered from a streamed one.
  """

  def __init__(self, base: Source, indices, name: str | None = None):
    indices = np.unique(np.asarray(indices, np.int64))
    if len(indices) and (indices[0] < 0 or indices[-1] >= base.num_examples):
      raise ValueError(f"{base}: subset indices must lie in [0, {base.num_examples})")
    super().__init__(name or f"{base.name}[subset]", len(indices))
    self.base = base
    self.indices = indices

  def host_indices(self, process_index: int, process_count: int) -> np.ndarray:
    """The kept indices within host `process_index`'s share of `base`."""
    share = host_indices(self.base, process_index, process_count)
    return self.indices[np.isin(self.indices, share)]

  def num_host_examples(self, process_index: int, process_count: int) -> int:
    return len(self.host_indices(process_index, process_count))

  def as_dataset(self, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    mine = self.host_indices(process_index, process_count)
    if isinstance(self.base, RandomAccessSource):
      return tf.data.Dataset.from_tensor_slices(mine).map(
        self.base.indexed_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
      )
    keep = np.zeros(self.base.num_examples, bool)
    keep[mine] = True
    keep_t = tf.constant(keep)
    return self.base.as_dataset(process_index, process_count).filter(
      lambda example: tf.gather(keep_t, example["index"])
    )
