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

Modules: `sources` (where examples come from), `preprocess` (one example -> one batch row),
`pipelines` (the image-text and MLM training streams, each with its own order and position, and
evaluation passes, batched).
"""

from data_pipeline.input.pipelines import (
  DEFAULT_SHUFFLE_BUFFER,
  EvalBatches,
  make_eval_batches,
  make_mlm_dataset,
  make_train_dataset,
  make_train_iterator,
)
from data_pipeline.input.preprocess import (
  PADDING_INDEX,
  STUDY_HASH_BUCKETS,
  Augmentation,
  MlmMasking,
  augment_image,
  decode_image,
  mask_tokens,
  rotate,
  study_index,
  uses_native_crop,
)
from data_pipeline.input.sources import (
  OPTIONAL_EXAMPLE_KEYS,
  REQUIRED_EXAMPLE_KEYS,
  ArraySource,
  DatasetSource,
  GeneratorSource,
  RandomAccessSource,
  Source,
  TfdsSource,
  as_source,
)

__all__ = [
  "DEFAULT_SHUFFLE_BUFFER",
  "OPTIONAL_EXAMPLE_KEYS",
  "PADDING_INDEX",
  "REQUIRED_EXAMPLE_KEYS",
  "STUDY_HASH_BUCKETS",
  "ArraySource",
  "Augmentation",
  "DatasetSource",
  "EvalBatches",
  "GeneratorSource",
  "MlmMasking",
  "RandomAccessSource",
  "Source",
  "TfdsSource",
  "as_source",
  "augment_image",
  "decode_image",
  "make_eval_batches",
  "make_mlm_dataset",
  "make_train_dataset",
  "make_train_iterator",
  "mask_tokens",
  "rotate",
  "study_index",
  "uses_native_crop",
]
