"""Pipelines: per-host training streams (shuffled, resumable) and evaluation passes, batched.

A training stream is endless: a fresh permutation of the host's share each epoch for random-access
sources (or, with `global_order`, the host's slice of one global shuffle), a seeded per-epoch
shuffle buffer for streamed ones. There are two kinds, each with its own order and position: the
image-text stream (`make_train_dataset`) and the masked-language-modelling stream over the same
split's reports (`make_mlm_dataset`: text only, images never decoded), as the original trains MLM
from its own loader. An evaluation pass covers every example once across hosts, padded with
`valid=False` rows so all hosts run the same number of steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from data_pipeline.input.preprocess import (
  ORDER_STREAM,
  PADDING_INDEX,
  Augmentation,
  MlmMasking,
  make_processor,
  mask_tokens,
  rng_key,
  study_index,
)
from data_pipeline.input.sources import RandomAccessSource, Source, as_source, check_process
from data_pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

DEFAULT_SHUFFLE_BUFFER = 2048

# The MLM stream's own random streams (order; masks), apart from the image-text stream's, so the
# two kinds draw independent orders from one seed.
MLM_ORDER_STREAM = 101
MLM_EXAMPLE_STREAM = 102


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


def _shuffle_seed(seed: int, process_index: int, epoch: tf.Tensor, stream: int) -> tf.Tensor:
  """An int64 seed for epoch `epoch` of one host's stream (a tensor: computed inside flat_map)."""
  name = "shuffle" if stream == ORDER_STREAM else f"shuffle{stream}"
  text = tf.strings.format(name + "-{}-{}-{}", (seed, process_index, epoch))
  return tf.strings.to_hash_bucket_fast(text, 2**62)


def _global_order_stream(
  source: RandomAccessSource,
  *,
  seed: int,
  process_index: int,
  process_count: int,
  batch_size: int,
  start_step: int,
  stream: int = ORDER_STREAM,
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

  @tf.autograph.experimental.do_not_convert
  def fetch(host_position):
    step, row = host_position // batch_size, host_position % batch_size
    position = step * global_batch + process_index * batch_size + row
    epoch, local = position // num, position % num
    key = rng_key(seed, 0, stream, epoch)
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
  stream: int = ORDER_STREAM,
) -> tf.data.Dataset:
  """Endless shuffled stream of (example, position) for this host, from `start_position` on."""
  host_size = source.num_host_examples(process_index, process_count)
  if host_size == 0:
    raise ValueError(f"host {process_index} of {process_count} has no examples of {source}")
  positions = tf.data.Dataset.counter(start=start_position)

  if isinstance(source, RandomAccessSource):
    # A fresh permutation of the host's share each epoch, computed per position: O(1) memory.
    @tf.autograph.experimental.do_not_convert
    def fetch(position):
      epoch, local = position // host_size, position % host_size
      key = rng_key(seed, process_index, stream, epoch)
      local = tf.random.experimental.index_shuffle(local, key, tf.constant(host_size - 1, tf.int64))
      index = tf.cast(source.host_index(local, process_index, process_count), tf.int64)
      return source.indexed_example(index), position

    return positions.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  base = source.as_dataset(process_index, process_count)
  first_epoch, offset = divmod(start_position, host_size)
  buffer = min(shuffle_buffer_size, host_size)

  def epoch_dataset(epoch):
    return base.shuffle(
      buffer, seed=_shuffle_seed(seed, process_index, epoch, stream), reshuffle_each_iteration=False
    )

  stream = tf.data.Dataset.counter(start=first_epoch).flat_map(epoch_dataset)
  # Resuming mid-epoch reads (but does not decode or augment) the epoch's first `offset` records.
  stream = stream.skip(offset)
  return tf.data.Dataset.zip(stream, positions)


def _example_stream(
  source: Source,
  *,
  seed: int,
  process_index: int,
  process_count: int,
  batch_size: int,
  start_step: int,
  shuffle_buffer_size: int,
  global_order: bool,
  order_stream: int,
) -> tf.data.Dataset:
  """The endless (example, position) stream of one kind (its order keyed by `order_stream`)."""
  if global_order:
    if not isinstance(source, RandomAccessSource):
      raise ValueError(
        f"global_order needs a random-access source (arrays, generator), got {source}"
      )
    return _global_order_stream(
      source,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      batch_size=batch_size,
      start_step=start_step,
      stream=order_stream,
    )
  return _train_stream(
    source,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    start_position=start_step * batch_size,
    shuffle_buffer_size=shuffle_buffer_size,
    stream=order_stream,
  )


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
  check_process(process_index, process_count)
  if batch_size <= 0 or start_step < 0:
    raise ValueError(f"need batch_size > 0 and start_step >= 0, got {batch_size}, {start_step}")
  source = as_source(source)
  tokenizer, augmentation, masking = _resolve(tokenizer, max_len, augment, mlm)
  stream = _example_stream(
    source,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    batch_size=batch_size,
    start_step=start_step,
    shuffle_buffer_size=shuffle_buffer_size,
    global_order=global_order,
    order_stream=ORDER_STREAM,
  )
  process = make_processor(
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


def make_mlm_dataset(
  source: Source | tf.data.Dataset,
  *,
  tokenizer: Tokenizer,
  batch_size: int,
  seed: int,
  masking: MlmMasking | bool = True,
  max_len: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
  start_step: int = 0,
  shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
  global_order: bool = False,
) -> tf.data.Dataset:
  """Endless per-host MLM batches over the split's reports: its own order and position.

  Rows hold `tokens`, `mlm_tokens`, `mlm_targets`, `mlm_weights`, `study_index`, `index`, `valid`
  (no image: images are never decoded). The order and the masks come from random streams of their
  own, so this stream is independent of the image-text stream of the same seed; `start_step`
  counts MLM batches of this stream (it resumes exactly, as `make_train_dataset` does).
  """
  check_process(process_index, process_count)
  if batch_size <= 0 or start_step < 0:
    raise ValueError(f"need batch_size > 0 and start_step >= 0, got {batch_size}, {start_step}")
  source = as_source(source)
  tokenizer, _, masking = _resolve(tokenizer, max_len, False, masking)
  if masking is None:
    raise ValueError("make_mlm_dataset needs MLM masking (masking=False given)")
  stream = _example_stream(
    source,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    batch_size=batch_size,
    start_step=start_step,
    shuffle_buffer_size=shuffle_buffer_size,
    global_order=global_order,
    order_stream=MLM_ORDER_STREAM,
  )
  key_host = 0 if global_order else process_index  # global positions key the randomness

  def process(example: dict[str, tf.Tensor], position: tf.Tensor) -> dict[str, tf.Tensor]:
    tokens = tokenizer.tokenize(example["text"])
    row = {
      "tokens": tokens,
      "study_index": study_index(example["study_id"]),
      "index": tf.cast(example["index"], tf.int32),
      "valid": tf.constant(True),
    }
    key = rng_key(seed, key_host, MLM_EXAMPLE_STREAM, position)
    row.update(mask_tokens(tokens, key, tokenizer.vocab_size, masking))
    return row

  dataset = stream.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return dataset.with_options(_options())


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
  eval_native_crop: bool = False,
) -> EvalBatches:
  """Every example of the split exactly once across hosts, in order, without augmentation.

  Each host pads its share with `valid=False` rows up to ceil(largest share / batch_size) batches,
  so all hosts run the same number of steps. MLM masks (when on) are seeded by (seed, example
  index). `num_examples` is needed only for a tf.data.Dataset of unknown cardinality.
  `eval_native_crop`: the centred window at native resolution, for runs trained with the
  `original_native` policy (`preprocess.uses_native_crop`).
  """
  check_process(process_index, process_count)
  source = as_source(source, num_examples)
  tokenizer, _, masking = _resolve(tokenizer, max_len, False, mlm)
  host_size = source.num_host_examples(process_index, process_count)
  num_batches = -(-source.max_host_examples(process_count) // batch_size)
  process = make_processor(
    tokenizer=tokenizer,
    image_size=image_size,
    seed=seed,
    process_index=0,
    augmentation=None,
    masking=masking,
    extra_keys=extra_keys,
    eval_native_crop=eval_native_crop,
  )
  dataset = source.as_dataset(process_index, process_count).map(
    tf.autograph.experimental.do_not_convert(lambda example: process(example, example["index"])),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  padding = tf.data.Dataset.from_tensors(_padding_row(dataset.element_spec, tokenizer.max_len))
  dataset = dataset.concatenate(padding.repeat(num_batches * batch_size - host_size))
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return EvalBatches(dataset.with_options(_options()), num_batches, host_size)
