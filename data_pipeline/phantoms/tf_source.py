"""The phantom as a tf.data source: flat fixed-shape features and a lazy `tf.data.Dataset`.

TensorFlow is imported only inside `as_tf_dataset`, so the generator itself stays numpy-only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from data_pipeline.names import CHEST_IMAGENOME_REGIONS, CHEXPERT_OBSERVATIONS
from data_pipeline.phantoms.config import DEFAULT_CONFIG, MAX_FINDINGS, PhantomConfig
from data_pipeline.phantoms.generate import findings_to_arrays, generate_example

# Keys, dtypes and shapes (`S` stands for the image size) of each `as_tf_dataset` element.
TF_FEATURES: tuple[tuple[str, str, tuple], ...] = (
  ("image", "uint8", ("S", "S", 1)),
  ("text", "string", ()),
  ("study_id", "string", ()),
  ("patient_id", "string", ()),
  ("labels", "float32", (len(CHEXPERT_OBSERVATIONS),)),
  ("region_boxes", "float32", (len(CHEST_IMAGENOME_REGIONS), 4)),
  ("index", "int32", ()),
  ("finding_id", "int32", (MAX_FINDINGS,)),
  ("finding_region", "int32", (MAX_FINDINGS,)),
  ("finding_box", "float32", (MAX_FINDINGS, 4)),
  ("finding_severity", "int32", (MAX_FINDINGS,)),
  ("finding_span", "int32", (MAX_FINDINGS, 2)),
  ("finding_term_span", "int32", (MAX_FINDINGS, 2)),
  ("finding_valid", "bool", (MAX_FINDINGS,)),
)


def example_to_features(example: Mapping) -> dict[str, np.ndarray]:
  """The flat, fixed-shape numpy features of one example (the `as_tf_dataset` element)."""
  features = {
    "image": example["image"],
    "text": np.bytes_(example["text"].encode("utf-8")),
    "study_id": np.bytes_(example["study_id"].encode("utf-8")),
    "patient_id": np.bytes_(example["patient_id"].encode("utf-8")),
    "labels": example["labels"].astype(np.float32),
    "region_boxes": example["region_boxes"].astype(np.float32),
    "index": np.int32(example["index"]),
  }
  features.update(findings_to_arrays(example["findings"]))
  return features


def as_tf_dataset(
  n: int,
  *,
  split: str = "train",
  seed: int = 0,
  config: PhantomConfig = DEFAULT_CONFIG,
  num_parallel_calls: int | None = None,
):
  """A deterministic `tf.data.Dataset` of `n` contract examples (keys in `TF_FEATURES`).

  Elements are generated lazily (`Dataset.range(n).map` over `tf.numpy_function`), in index
  order even when mapped in parallel, and equal `example_to_features(generate_example(i, ...))`.
  """
  import tensorflow as tf  # deferred: the generator itself needs only numpy

  keys = [key for key, _, _ in TF_FEATURES]
  dtypes = [tf.as_dtype(dtype) for _, dtype, _ in TF_FEATURES]
  size = config.image_size
  shapes = [tuple(size if d == "S" else d for d in shape) for _, _, shape in TF_FEATURES]

  def make(index):
    """The flat features of one example, as a tuple in `TF_FEATURES` order."""
    features = example_to_features(
      generate_example(int(index), split=split, seed=seed, config=config)
    )
    return tuple(features[key] for key in keys)

  @tf.autograph.experimental.do_not_convert
  def to_dict(index):
    """Graph-side wrapper: call `make` and restore the static shapes."""
    values = tf.numpy_function(make, [index], dtypes, stateful=False)
    out = {}
    for key, value, shape in zip(keys, values, shapes, strict=True):
      value.set_shape(shape)
      out[key] = value
    return out

  parallel = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
  return tf.data.Dataset.range(n).map(to_dict, num_parallel_calls=parallel, deterministic=True)
