"""The trainer's view of the data: sources per split, the tokenizer, host batches -> global arrays.

This is where `jimte` (JAX side) meets `data_pipeline` (TensorFlow side): everything crossing over
is a numpy batch with the keys of docs/contracts.md. The tokenizer lives in `<workdir>/tokenizer` so
resumed runs, exports and evaluation use exactly the one the run was trained with.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data_pipeline import builders
from data_pipeline import input as input_lib
from data_pipeline.tokenizer import Tokenizer
from jimte import batches as batches_lib
from jimte import multihost
from jimte import steps as steps_lib
from jimte.anatomy import table as anatomy_table
from jimte.anatomy.regions import default_atlas
from jimte.anatomy.table import AnatomyTable

log = logging.getLogger("jimte.data")


@dataclasses.dataclass
class DataBundle:
  """Sources of the configured splits plus the tokenizer, and iterators of global batches."""

  config: ml_collections.ConfigDict
  sources: dict[str, input_lib.Source]
  tokenizer: Tokenizer
  tokenizer_dir: str
  ground_truth: dict[str, list[list[dict]]]  # split -> per-example findings (synthetic set only)
  # split -> the phantoms' per-image region boxes [N, 29, 4] (synthetic set only)
  region_boxes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  _anatomy: dict[str, AnatomyTable] = dataclasses.field(default_factory=dict, repr=False)

  @property
  def num_train(self) -> int:
    return self.sources[self.config.data.train_split].num_examples

  @property
  def text_buckets(self) -> tuple[int, ...]:
    """`config.text_buckets`, checked against the tokenizer's length (`batches.trim_text`)."""
    return batches_lib.check_text_buckets(
      self.config.get("text_buckets", ()), self.tokenizer.max_len
    )

  # ---------------------------------------------------------------------------------------------
  @classmethod
  def create(
    cls, config: ml_collections.ConfigDict, workdir: str, eval_splits: Iterable[str] = ()
  ) -> DataBundle:
    """Sources of the train split and of `eval_splits` (the evaluators'), and the tokenizer."""
    dc = config.data
    splits = [dc.train_split] + sorted(set(eval_splits) - {dc.train_split})
    ground_truth: dict[str, list[list[dict]]] = {}
    region_boxes: dict[str, np.ndarray] = {}
    train_texts = None
    if dc.source == "synthetic":
      sources = {}
      for split in splits:
        source, texts, findings, boxes = _synthetic_source(dc, split)
        sources[split], ground_truth[split], region_boxes[split] = source, findings, boxes
        if split == dc.train_split:
          train_texts = texts
    elif dc.source == "tfds":
      # Decided on process 0: a build finishing while processes start must not split them.
      dataset_dir = multihost.from_process_0(tfds_dataset_dir(dc))
      sources = {split: input_lib.TfdsSource(dataset_dir, split) for split in splits}
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
      region_boxes=region_boxes,
    )

  # ---------------------------------------------------------------------------------------------
  def anatomy_table(self, split: str) -> AnatomyTable:
    """The split's anatomy (region texts tokenised, codes, boxes), built once on each host.

    Phantoms: exact codes and their own boxes; a TFDS split: the labeler's weak codes, and its
    `region_boxes` feature where it has one (config.alc.boxes='auto'), else the default atlas.
    """
    if split not in self._anatomy:
      alc = self.config.alc
      if alc.boxes not in ("auto", "atlas"):
        raise ValueError(f"config.alc.boxes: {alc.boxes!r} is not one of auto | atlas")
      source = self.sources[split]
      texts = _texts_of(source)
      if split in self.ground_truth:
        boxes = self.region_boxes[split] if alc.boxes == "auto" else None
        table = anatomy_table.synthetic_table(texts, self.ground_truth[split], boxes)
      else:
        boxes = _region_boxes_of(source) if alc.boxes == "auto" else None
        table = anatomy_table.build_table(texts, boxes=boxes)
      self._anatomy[split] = table.with_tokens(self.tokenizer, int(alc.text_len))
      log.info(
        "anatomy of %s: %d examples, %d distinct region texts, %d abnormal (image, region) pairs",
        split,
        table.num_examples,
        len(table.texts),
        int(np.sum(table.codes != 0)),
      )
    return self._anatomy[split]

  def _with_anatomy(self, split: str, host_batches: Iterator[dict]) -> Iterator[dict]:
    """Host batches with the split's anatomy rows joined by their `index`."""
    table = self.anatomy_table(split)
    for batch in host_batches:
      yield {**batch, **table.batch_rows(batch["index"])}

  # ---------------------------------------------------------------------------------------------
  def train_batches(self, mesh, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Endless global image-text batches from ITM step `start_step` on (each host its share)."""
    c = self.config
    source = self.sources[c.data.train_split]
    it = input_lib.make_train_iterator(
      source,
      tokenizer=self.tokenizer,
      image_size=c.image_size,
      batch_size=_host_batch_size(c.batch_size),
      seed=c.seed,
      augment=c.data.augment,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      start_step=start_step,
      global_order=isinstance(source, input_lib.RandomAccessSource),
    )
    if steps_lib.uses_anatomy(c):
      it = self._with_anatomy(c.data.train_split, it)
    it = batches_lib.trim_text(it, self.text_buckets)
    return batches_lib.prefetch_to_mesh(it, mesh, size=2)

  def mlm_batches(self, mesh, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Endless global MLM batches over the train split's reports from MLM step `start_step` on:
    a stream of its own (own order, own position), as the original's separate MLM loader."""
    c = self.config
    source = self.sources[c.data.train_split]
    dataset = input_lib.make_mlm_dataset(
      source,
      tokenizer=self.tokenizer,
      batch_size=_host_batch_size(c.batch_size),
      seed=c.seed,
      masking=input_lib.MlmMasking(select_rate=c.loss.mlm_mask_rate),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      start_step=start_step,
      global_order=isinstance(source, input_lib.RandomAccessSource),
    )
    it = batches_lib.trim_text(dataset.as_numpy_iterator(), self.text_buckets)
    return batches_lib.prefetch_to_mesh(it, mesh, size=2)

  def eval_batches(self, mesh, split: str, anatomy: bool = False) -> Iterator[dict[str, jax.Array]]:
    """One pass over `split`, every example exactly once across hosts, padding marked invalid;
    with `anatomy`, the split's anatomy rows joined (`anatomy_table`)."""
    c = self.config
    batches = input_lib.make_eval_batches(
      self.sources[split],
      tokenizer=self.tokenizer,
      image_size=c.image_size,
      batch_size=_host_batch_size(c.batch_size),
      seed=c.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      eval_native_crop=input_lib.uses_native_crop(c.data.get("augment", "none")),
    )
    if anatomy:
      batches = self._with_anatomy(split, batches)
    return (batches_lib.to_global_batch(b, mesh) for b in batches)

  def ground_truth_boxes(self, split: str) -> dict[int, list[tuple[str, tuple[float, ...]]]] | None:
    """{example index: [(finding name, normalised box)]} where the split carries ground truth."""
    if split not in self.ground_truth:
      return None
    return {
      i: [(f["name"], tuple(f["box"])) for f in findings]
      for i, findings in enumerate(self.ground_truth[split])
    }


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
  generated = phantoms.generate_split(n, split=split, seed=dc.seed, config=phantom_config(dc))
  source = input_lib.ArraySource(
    f"synthetic/{split}",
    images=generated["image"],
    texts=generated["text"],
    study_ids=generated["study_id"],
    patient_ids=generated["patient_id"],
    labels=generated["labels"],
  )
  return source, list(generated["text"]), list(generated["findings"]), generated["region_boxes"]


def phantom_config(dc: ml_collections.ConfigDict):
  """The `PhantomConfig` of `config.data`: `phantom_size` plus the knobs in `data.phantom` (any
  `PhantomConfig` field but `image_size`; a field left out keeps the generator's default)."""
  from data_pipeline import phantoms

  knobs = dict(dc.get("phantom", None) or {})
  fields = {f.name for f in dataclasses.fields(phantoms.PhantomConfig)} - {"image_size"}
  unknown = sorted(set(knobs) - fields)
  if unknown:
    raise ValueError(
      f"config.data.phantom.{unknown[0]}: not a knob of the phantom generator "
      f"(its knobs: {', '.join(sorted(fields))})"
    )
  try:
    return phantoms.PhantomConfig(image_size=dc.phantom_size, **knobs)
  except ValueError as e:
    raise ValueError(f"config.data.phantom: {e}") from e


def tfds_dataset_dir(dc: ml_collections.ConfigDict) -> str:
  """The built TFDS dataset that `config.data` names, in TFDS's own layout.

  That is `<tfds_data_dir>/<tfds_name>/<tfds_config>/<latest version>`, with the builder's default
  config when `tfds_config` is empty and TFDS's default data dir (`$TFDS_DATA_DIR`, else
  `~/tensorflow_datasets`) when `tfds_data_dir` is; a `tfds_data_dir` that is itself a dataset
  directory (holds dataset_info.json) is used as it is.
  """
  import tensorflow as tf  # tf.io.gfile: the data may be on GCS
  import tensorflow_datasets as tfds

  root = dc.tfds_data_dir or tfds.core.constants.get_default_data_dir()
  if tf.io.gfile.exists(os.path.join(root, "dataset_info.json")):
    return root
  if not dc.tfds_name:
    raise ValueError(
      f"config.data.tfds_name: required with config.data.source='tfds' unless "
      f"config.data.tfds_data_dir is itself a dataset directory ({root} is not)"
    )
  config_name = dc.tfds_config or _default_tfds_config(dc.tfds_name, root)
  config_dir = os.path.join(root, dc.tfds_name, *([config_name] if config_name else []))
  listed = tf.io.gfile.listdir(config_dir) if tf.io.gfile.isdir(config_dir) else []
  versions = [
    v
    for v in (entry.rstrip("/") for entry in listed)
    if tfds.core.Version.is_valid(v)
    and tf.io.gfile.exists(os.path.join(config_dir, v, "dataset_info.json"))
  ]
  if not versions:
    builder = (
      f"data_pipeline/builders/{dc.tfds_name}"
      if dc.tfds_name in builders.BUILDER_NAMES
      else dc.tfds_name
    )
    raise FileNotFoundError(
      f"config.data: no built TFDS dataset in {config_dir}/<version> (tfds_name="
      f"{dc.tfds_name!r}, tfds_config={dc.tfds_config!r}, tfds_data_dir={dc.tfds_data_dir!r}); "
      f"build it with `tfds build {builder} --data_dir {root}"
      + (f" --config {config_name}" if config_name else "")
      + "` (add --manual_dir DIR for data you downloaded yourself)"
    )
  latest = max(versions, key=tfds.core.Version)
  return os.path.join(config_dir, latest)


def _default_tfds_config(name: str, root: str) -> str:
  """The default config of dataset `name`: its builder's (a jimte builder), else the one TFDS
  recorded when building it ('' for a dataset without configs)."""
  if name in builders.BUILDER_NAMES:
    builder = builders.builder_class(name)
    if builder.BUILDER_CONFIGS:
      return builder.default_builder_config.name
  from etils import epath
  from tensorflow_datasets.core import dataset_builder

  return dataset_builder.load_default_config_name(epath.Path(root) / name) or ""


def _load_or_train_tokenizer(config, directory: str, train_source, train_texts) -> Tokenizer:
  """Loads `<workdir>/tokenizer` (resume), else `config.tokenizer.path`, else trains one (process 0)
  on the train split's reports and shares it through the work dir.

  Whether a saved tokenizer exists is decided on process 0: a process arriving later would find
  the one process 0 is saving now and skip the barrier the others wait at.
  """
  tc = config.tokenizer
  import tensorflow as tf  # tf.io.gfile: the work dir may be on GCS

  saved = multihost.from_process_0(tf.io.gfile.exists(os.path.join(directory, "tokenizer.json")))
  if saved:
    tokenizer = Tokenizer.load(directory)
  elif tc.path or config.get("init_from"):  # a stage-2 run reads its stage-1 run's tokenizer
    tokenizer = Tokenizer.load(tc.path or os.path.join(config.init_from, "tokenizer"))
    if jax.process_index() == 0:
      tokenizer.save(directory)
  else:
    if jax.process_index() == 0:
      texts = train_texts if train_texts is not None else _texts_of(train_source)
      tokenizer = Tokenizer.train(
        texts,
        max_len=tc.max_len,
        vocab_size=tc.vocab_size,
        model_type=tc.model_type,
        word_normalizer=tc.get("word_normalizer", "plain"),
        num_threads=1,
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


def _region_boxes_of(source) -> np.ndarray | None:
  """[N, 29, 4] per-image region boxes of a source that stores them (`region_boxes`), else None.

  A region a split's boxes lack (a NaN row: e.g. a MIMIC-CXR image without a Chest ImaGenome
  scene graph, or one that misses that region) takes the default atlas's box, counted in a log line.
  """
  dataset = source.as_dataset(0, 1)
  if "region_boxes" not in dataset.element_spec:
    return None
  boxes = np.stack(list(dataset.map(lambda e: e["region_boxes"]).as_numpy_iterator()))
  boxes = boxes.astype(np.float32)
  missing = np.isnan(boxes).any(-1)
  if missing.any():
    boxes = np.where(missing[..., None], default_atlas()[None], boxes)
    log.info(
      "%s: %d of %d region boxes absent (%d images without any): the default atlas's used",
      source,
      int(missing.sum()),
      missing.size,
      int(missing.all(-1).sum()),
    )
  return boxes
