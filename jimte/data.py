"""The trainer's view of the data: sources per split, the tokenizer, host batches -> global arrays.

This is where `jimte` (JAX side) meets `data_pipeline` (TensorFlow side): everything crossing over
is a numpy batch with the keys of docs/contracts.md. The tokenizer lives in `<workdir>/tokenizer` so
resumed runs, exports and evaluation use exactly the one the run was trained with.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator

import jax
import ml_collections
from jax.experimental import multihost_utils

from data_pipeline import input as input_lib
from data_pipeline.tokenizer import Tokenizer
from jimte import batches as batches_lib

log = logging.getLogger("jimte.data")


@dataclasses.dataclass
class DataBundle:
  """Sources of the configured splits plus the tokenizer, and iterators of global batches."""

  config: ml_collections.ConfigDict
  sources: dict[str, input_lib.Source]
  tokenizer: Tokenizer
  tokenizer_dir: str
  ground_truth: dict[str, list[list[dict]]]  # split -> per-example findings (synthetic set only)

  @property
  def num_train(self) -> int:
    return self.sources[self.config.data.train_split].num_examples

  # ---------------------------------------------------------------------------------------------
  @classmethod
  def create(cls, config: ml_collections.ConfigDict, workdir: str) -> DataBundle:
    dc = config.data
    splits = [dc.train_split] + sorted(
      {dc.eval_split, *(e.get("split", dc.eval_split) for e in config.evals.values())}
      - {dc.train_split}
    )
    ground_truth: dict[str, list[list[dict]]] = {}
    train_texts = None
    if dc.source == "synthetic":
      sources = {}
      for split in splits:
        source, texts, findings = _synthetic_source(dc, split)
        sources[split], ground_truth[split] = source, findings
        if split == dc.train_split:
          train_texts = texts
    elif dc.source == "tfds":
      if not dc.tfds_data_dir:
        raise ValueError(
          "config.data.tfds_data_dir: the directory of a built TFDS dataset is required "
          "for config.data.source='tfds' (build one with `tfds build data_pipeline/builders/NAME`)"
        )
      sources = {split: input_lib.TfdsSource(dc.tfds_data_dir, split) for split in splits}
    else:
      raise ValueError(
        f"config.data.source: unknown source {dc.source!r} (expected synthetic | tfds)"
      )
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    tokenizer = _load_or_train_tokenizer(
      config, tokenizer_dir, sources[dc.train_split], train_texts
    )
    return cls(
      config=config,
      sources=sources,
      tokenizer=tokenizer,
      tokenizer_dir=tokenizer_dir,
      ground_truth=ground_truth,
    )

  # ---------------------------------------------------------------------------------------------
  def train_batches(self, mesh, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Endless global training batches from `start_step` on (each host reads its share)."""
    c = self.config
    host_batch = _host_batch_size(c.batch_size)
    it = input_lib.make_train_iterator(
      self.sources[c.data.train_split],
      tokenizer=self.tokenizer,
      image_size=c.image_size,
      batch_size=host_batch,
      seed=c.seed,
      augment=c.data.augment,
      mlm=_mlm(c),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      start_step=start_step,
      global_order=isinstance(self.sources[c.data.train_split], input_lib.RandomAccessSource),
    )
    return batches_lib.prefetch_to_mesh(it, mesh, size=2)

  def eval_batches(self, mesh, split: str) -> Iterator[dict[str, jax.Array]]:
    """One pass over `split`, every example exactly once across hosts, padding marked invalid."""
    c = self.config
    batches = input_lib.make_eval_batches(
      self.sources[split],
      tokenizer=self.tokenizer,
      image_size=c.image_size,
      batch_size=_host_batch_size(c.batch_size),
      seed=c.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    return (batches_lib.to_global_batch(b, mesh) for b in batches)

  def ground_truth_boxes(self, split: str) -> dict[int, list[tuple[str, tuple[float, ...]]]] | None:
    """{example index: [(finding name, normalised box)]} where the split carries ground truth."""
    if split not in self.ground_truth:
      return None
    return {
      i: [(f["name"], tuple(f["box"])) for f in findings]
      for i, findings in enumerate(self.ground_truth[split])
    }


def _mlm(config) -> bool | input_lib.MlmMasking:
  if not config.loss.mixture:
    return False
  return input_lib.MlmMasking(select_rate=config.loss.mlm_mask_rate)


def _host_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(
      f"config.batch_size={global_batch} is not divisible by the {jax.process_count()} processes"
    )
  if global_batch % jax.device_count():
    raise ValueError(
      f"config.batch_size={global_batch} is not divisible by the {jax.device_count()} devices"
    )
  return global_batch // jax.process_count()


def _synthetic_source(dc: ml_collections.ConfigDict, split: str):
  """The phantom split generated in memory (deterministic from data.seed), as an ArraySource."""
  from data_pipeline import phantoms

  n = dc.num_train if split == dc.train_split else dc.num_eval
  generated = phantoms.generate_split(
    n, split=split, seed=dc.seed, config=phantoms.PhantomConfig(image_size=dc.phantom_size)
  )
  source = input_lib.ArraySource(
    f"synthetic/{split}",
    images=generated["image"],
    texts=generated["text"],
    study_ids=generated["study_id"],
    patient_ids=generated["patient_id"],
    labels=generated["labels"],
  )
  return source, list(generated["text"]), list(generated["findings"])


def _load_or_train_tokenizer(config, directory: str, train_source, train_texts) -> Tokenizer:
  """Loads `<workdir>/tokenizer` (resume), else `config.tokenizer.path`, else trains one (process 0)
  on the train split's reports and shares it through the work dir."""
  tc = config.tokenizer
  import tensorflow as tf  # tf.io.gfile: the work dir may be on GCS

  if tf.io.gfile.exists(os.path.join(directory, "tokenizer.json")):
    tokenizer = Tokenizer.load(directory)
  elif tc.path:
    tokenizer = Tokenizer.load(tc.path)
    if jax.process_index() == 0:
      tokenizer.save(directory)
  else:
    if jax.process_index() == 0:
      texts = train_texts if train_texts is not None else _texts_of(train_source)
      tokenizer = Tokenizer.train(
        texts, max_len=tc.max_len, vocab_size=tc.vocab_size, model_type=tc.model_type, num_threads=1
      )
      tokenizer.save(directory)
      log.info(
        "trained a %s tokenizer with %d pieces on %d reports -> %s",
        tc.model_type,
        tokenizer.vocab_size,
        len(texts),
        directory,
      )
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("jimte_tokenizer_saved")
    if jax.process_index() != 0:
      tokenizer = Tokenizer.load(directory)
  if tokenizer.max_len != tc.max_len:
    raise ValueError(
      f"config.tokenizer.max_len={tc.max_len} but the tokenizer in {directory} has "
      f"max_len={tokenizer.max_len}"
    )
  return tokenizer


def _texts_of(source) -> list[str]:
  return [
    t.decode("utf-8") for t in source.as_dataset(0, 1).map(lambda e: e["text"]).as_numpy_iterator()
  ]
