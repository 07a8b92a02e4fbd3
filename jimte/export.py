"""Embedding exports: Parquet part files (fixed-size-list float32 columns) plus a JSON manifest.

Layout of an export directory (format version `FORMAT_VERSION`):
  part-p{process:03d}-{part:05d}.parquet  rows: `id` (string), `embedding` (fixed-size list of
                                          float32, D), optional `report` (string) and the
                                          fixed-size-list columns `regions`, `words`, `word_mask`
  export_state.json                       the settings the export was started with (resume check)
  manifest.json                           written last (by process 0 after every host finished):
                                          model, step, config hash, tokenizer, dims, dtype, count,
                                          kind, created time, parts, skipped inputs

Rows are written in fixed-size parts, each through a temporary name and an atomic rename, so an
interrupted export holds only complete parts; the same command continues after the last one and ends
with the same part contents an uninterrupted run writes. A finished export (manifest present) is
never overwritten without `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "export_state.json"
DEFAULT_PART_SIZE = 4096
ARRAY_COLUMNS = (
  "embedding",
  "regions",
  "words",
  "word_mask",
  "anatomy",  # image exports with anatomy: [29, D] region embeddings (own boxes, else atlas)
  "region_text",  # report exports with anatomy: [29, D] region-text vectors
  "region_codes",  # report exports with anatomy: [29] weak region codes (jimte.anatomy.regions)
)
STRING_COLUMNS = ("report", "region_sentences")  # region_sentences: JSON, 29 lists of sentences


class ExportExistsError(FileExistsError):
  """The output directory already holds a finished export (pass overwrite to replace it)."""


def part_name(process_index: int, part: int) -> str:
  return f"part-p{process_index:03d}-{part:05d}.parquet"


def _fixed_list(values: np.ndarray) -> pa.Array:
  """A [N, ...] array as a fixed-size-list column of its flattened rows."""
  flat = values.reshape(len(values), -1)
  inner = pa.array(flat.reshape(-1), type=pa.bool_() if flat.dtype == bool else pa.float32())
  return pa.FixedSizeListArray.from_arrays(inner, flat.shape[1])


def _table(rows: Mapping[str, np.ndarray | list], skipped: list[dict]) -> pa.Table:
  columns = {"id": pa.array([str(i) for i in rows["id"]], pa.string())}
  for key in STRING_COLUMNS:
    if key in rows:
      columns[key] = pa.array([None if r is None else str(r) for r in rows[key]], pa.string())
  shapes = {}
  for key in ARRAY_COLUMNS:
    if key in rows:
      values = np.asarray(rows[key])
      values = values if values.dtype == bool else values.astype(np.float32)
      columns[key] = _fixed_list(values)
      shapes[key] = list(values.shape[1:])
  metadata = {b"jimte.shapes": json.dumps(shapes).encode(), b"jimte.skipped": json.dumps(skipped)}
  return pa.table(columns).replace_schema_metadata(metadata)


@dataclasses.dataclass
class ExportWriter:
  """Writes rows to `out_dir` in parts of `part_size` rows; resumes an interrupted export.

  `settings` (model, config hash, source, what is exported) must equal those of an interrupted
  export being resumed. After `open()`, `rows_done` is how many leading rows of this host's share
  are already stored: the caller feeds rows from there on.
  """

  out_dir: str
  settings: dict
  part_size: int = DEFAULT_PART_SIZE
  process_index: int = 0
  overwrite: bool = False
  rows_done: int = 0
  _parts_done: int = 0
  _buffer: dict = dataclasses.field(default_factory=dict)
  _buffered_skips: list = dataclasses.field(default_factory=list)
  _buffered: int = 0

  def open(self) -> ExportWriter:
    if os.path.exists(os.path.join(self.out_dir, MANIFEST)):
      if not self.overwrite:
        raise ExportExistsError(
          f"{self.out_dir} already holds a finished export; pass --overwrite to replace it"
        )
      shutil.rmtree(self.out_dir)
    os.makedirs(self.out_dir, exist_ok=True)
    for tmp in glob.glob(os.path.join(self.out_dir, f"*.p{self.process_index:03d}.tmp")):
      os.remove(tmp)  # a part half-written when an earlier run was killed
    state_path = os.path.join(self.out_dir, STATE)
    settings = json.loads(json.dumps({**self.settings, "part_size": self.part_size}))
    if os.path.exists(state_path):
      with open(state_path) as f:
        previous = json.load(f)
      if previous != settings:
        diff = sorted(
          k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k)
        )
        raise ValueError(
          f"{self.out_dir} holds an unfinished export with other settings ({', '.join(diff)}); "
          "pass --overwrite to start again"
        )
    elif self.process_index == 0:
      _atomic_write_text(state_path, json.dumps(settings, indent=2, sort_keys=True))
    while os.path.exists(self._part_path(self._parts_done)):
      self._parts_done += 1
    self.rows_done = self._parts_done * self.part_size
    return self

  def _part_path(self, part: int) -> str:
    return os.path.join(self.out_dir, part_name(self.process_index, part))

  def skip(self, record: dict) -> None:
    """Notes an input left out (a bad file), stored with the part of the rows around it."""
    self._buffered_skips.append(record)

  def add(self, rows: Mapping[str, np.ndarray | list]) -> int:
    """Adds a batch of rows (same keys every call); returns the number of parts written so far."""
    n = len(rows["id"])
    start = 0
    while start < n:
      take = min(n - start, self.part_size - self._buffered)
      for key, values in rows.items():
        self._buffer.setdefault(key, []).append(values[start : start + take])
      self._buffered += take
      start += take
      if self._buffered == self.part_size:
        self._flush()
    return self._parts_done

  def _flush(self) -> None:
    if not self._buffered and not self._buffered_skips:
      return
    rows = {
      k: (np.concatenate(v) if isinstance(v[0], np.ndarray) else sum((list(x) for x in v), []))
      for k, v in self._buffer.items()
    }
    path = self._part_path(self._parts_done)
    if rows:
      table = _table(rows, self._buffered_skips)
    else:  # only skipped inputs since the last part: an empty part of the same schema holds them
      previous = self._part_path(self._parts_done - 1)
      schema = pq.read_schema(previous) if self._parts_done else pa.schema([("id", pa.string())])
      metadata = {**(schema.metadata or {}), b"jimte.skipped": json.dumps(self._buffered_skips)}
      table = schema.empty_table().replace_schema_metadata(metadata)
    tmp = f"{path}.p{self.process_index:03d}.tmp"
    try:
      pq.write_table(table, tmp)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    self._parts_done += 1
    self._buffer, self._buffered, self._buffered_skips = {}, 0, []

  def close(self, manifest: dict, *, process_count: int = 1, barrier=None) -> dict | None:
    """Writes the last (short) part; after `barrier()` (all hosts done) process 0 writes the
    manifest listing every host's parts and skipped inputs. Returns it on process 0."""
    self._flush()
    if barrier is not None:
      barrier()
    if self.process_index != 0:
      return None
    parts = sorted(
      os.path.basename(p) for p in glob.glob(os.path.join(self.out_dir, "part-*.parquet"))
    )
    count, skipped, shapes = 0, [], {}
    for name in parts:
      meta = pq.read_metadata(os.path.join(self.out_dir, name))
      count += meta.num_rows
      kv = meta.metadata or {}
      skipped += json.loads(kv.get(b"jimte.skipped", b"[]"))
      shapes = json.loads(kv.get(b"jimte.shapes", b"{}")) or shapes
    full = {
      **manifest,
      "format_version": FORMAT_VERSION,
      "dtype": "float32",
      "count": count,
      "shapes": shapes,
      "dim": shapes.get("embedding", [None])[0],
      "parts": parts,
      "process_count": process_count,
      "part_size": self.part_size,
      "skipped": skipped,
      "n_skipped": len(skipped),
      "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _atomic_write_text(os.path.join(self.out_dir, MANIFEST), json.dumps(full, indent=2))
    return full


def _atomic_write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_rows(
  out_dir: str,
  batches: Iterable[Mapping],
  *,
  settings: dict,
  manifest: dict,
  part_size: int = DEFAULT_PART_SIZE,
  overwrite: bool = False,
  stop_after_parts: int | None = None,
) -> dict | None:
  """Single-process export of already-computed row batches (resuming skips the stored rows).

  `stop_after_parts` stops (without a manifest) once that many parts exist: an interruption.
  """
  writer = ExportWriter(out_dir, settings, part_size=part_size, overwrite=overwrite).open()
  for batch in _skip_rows(batches, writer.rows_done):
    if writer.add(batch) >= (stop_after_parts or float("inf")):
      return None
  return writer.close(manifest)


def _skip_rows(batches: Iterable[Mapping], n: int) -> Iterator[Mapping]:
  for batch in batches:
    size = len(batch["id"])
    if n >= size:
      n -= size
      continue
    yield {k: v[n:] for k, v in batch.items()} if n else batch
    n = 0


@dataclasses.dataclass(frozen=True)
class Export:
  """An export read back: its manifest and the row columns (arrays reshaped to their shapes)."""

  manifest: dict
  ids: list[str]
  embeddings: np.ndarray
  reports: list[str | None] | None
  extra: dict[str, np.ndarray]


def read_export(path: str, *, columns: Iterable[str] = ()) -> Export:
  """Reads a finished export (ids, embeddings, reports, and the named extra array columns)."""
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.exists(manifest_path):
    raise FileNotFoundError(f"{path} is not a finished export (no {MANIFEST})")
  with open(manifest_path) as f:
    manifest = json.load(f)
  if manifest.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{manifest_path}: format version {manifest.get('format_version')} unknown")
  tables = [pq.read_table(os.path.join(path, p)) for p in manifest["parts"]]
  table = pa.concat_tables(tables)
  shapes = manifest["shapes"]

  def column(name):
    if name not in table.column_names:
      raise KeyError(f"{path}: the export has no column {name!r} (columns: {table.column_names})")
    if name in STRING_COLUMNS:
      return table.column(name).to_pylist()
    values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(table), *shapes[name])

  reports = table.column("report").to_pylist() if "report" in table.column_names else None
  return Export(
    manifest=manifest,
    ids=table.column("id").to_pylist(),
    embeddings=column("embedding").astype(np.float32),
    reports=reports,
    extra={name: column(name) for name in columns},
  )


# ---- Drivers: a model (jimte.inference.JimteModel) over a folder, a CSV of reports, a TFDS split.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def model_manifest(model, kind: str, source: str) -> tuple[dict, dict]:
  """(settings checked on resume, manifest fields) of an export of `model` from `source`."""
  settings = dict(
    model_name=model.model_name,
    config_hash=model.config_hash,
    step=int(model.step),
    kind=kind,
    source=source,
  )
  tokenizer = getattr(model.tokenizer, "model_file", None) or type(model.tokenizer).__name__
  return settings, dict(**settings, tokenizer=str(tokenizer), image_size=int(model.image_size))


def _progress(total: int, initial: int, desc: str):
  from tqdm import tqdm

  return tqdm(total=total, initial=initial, desc=desc, unit="row", disable=None)


def export_folder(
  model,
  folder: str,
  out_dir: str,
  *,
  regions: bool = False,
  anatomy: bool = False,
  part_size: int = DEFAULT_PART_SIZE,
  batch_size: int = 32,
  overwrite: bool = False,
  strict: bool = False,
  process_index: int = 0,
  process_count: int = 1,
  barrier=None,
  stop_after_parts: int | None = None,
) -> dict | None:
  """Global (and, with `regions`, region; with `anatomy`, the atlas regions') embeddings of every
  image file under `folder`, by relative path in sorted order; this host takes every
  `process_count`-th file. A file that cannot be read is skipped and listed in the manifest
  (`strict`: the first one fails)."""
  from jimte.image_files import BadImageError, read_xray

  files = sorted(
    os.path.relpath(os.path.join(root, name), folder)
    for root, _, names in os.walk(folder)
    for name in names
    if name.lower().endswith(IMAGE_SUFFIXES)
  )
  if not files:
    raise FileNotFoundError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
  share = files[process_index::process_count]
  settings, manifest = model_manifest(model, "image", os.path.abspath(folder))
  settings["regions"] = regions
  if anatomy:
    settings["anatomy"] = True
  writer = ExportWriter(
    out_dir, settings, part_size=part_size, process_index=process_index, overwrite=overwrite
  ).open()
  # Resume: rows_done counts stored rows; skipped files sit in the parts' metadata, so re-walk the
  # share, re-reading files, but encode only those after the stored rows.
  stored_skips = sum(
    len(
      json.loads(
        (pq.read_metadata(os.path.join(out_dir, part_name(process_index, p))).metadata or {}).get(
          b"jimte.skipped", b"[]"
        )
      )
    )
    for p in range(writer.rows_done // part_size)
  )
  position = writer.rows_done + stored_skips
  bar = _progress(len(share), position, "export images")
  try:
    pending: list = []
    for rel in share[position:]:
      try:
        pending.append((rel, read_xray(os.path.join(folder, rel))))
      except BadImageError as e:
        if strict:
          raise
        if pending:
          if _encode_images(model, writer, pending, regions, anatomy) >= (
            stop_after_parts or float("inf")
          ):
            return None
          pending = []
        writer.skip(dict(source=rel, error=str(e)))
      if len(pending) == batch_size:
        if _encode_images(model, writer, pending, regions, anatomy) >= (
          stop_after_parts or float("inf")
        ):
          return None
        pending = []
      bar.update(1)
    if pending and _encode_images(model, writer, pending, regions, anatomy) >= (
      stop_after_parts or float("inf")
    ):
      return None
  finally:
    bar.close()
  return writer.close(manifest, process_count=process_count, barrier=barrier)


def _encode_images(
  model, writer: ExportWriter, pending: list, regions: bool, anatomy: bool = False
) -> int:
  out = model.encode_images([image for _, image in pending], regions=regions)
  rows = dict(id=[rel for rel, _ in pending], embedding=out.embeddings)
  if regions:
    rows["regions"] = out.regions
  if anatomy:  # the default atlas's 29 boxes on each file
    from jimte.anatomy.regions import default_atlas

    rows["anatomy"] = np.stack([model.encode_anatomy(x, default_atlas())[0] for _, x in pending])
  return writer.add(rows)


def _anatomy_rows(model, texts: list[str], labeler) -> dict:
  """Report rows' anatomy: region-text vectors [n, 29, D], weak codes, the sentences (JSON)."""
  from jimte.anatomy.regions import report_anatomy

  per_report = [report_anatomy(t, labeler) for t in texts]
  flat = model.encode_region_texts([text for texts_, _, _ in per_report for text in texts_])
  return dict(
    region_text=flat.reshape(len(texts), -1, flat.shape[-1]),
    region_codes=np.stack([codes for _, _, codes in per_report]).astype(np.float32),
    region_sentences=[json.dumps(sentences) for _, sentences, _ in per_report],
  )


def _labeler(anatomy: bool):
  if not anatomy:
    return None
  from data_pipeline.labels.labeler import ReportLabeler

  return ReportLabeler()


def export_csv(
  model,
  csv_path: str,
  out_dir: str,
  *,
  id_column: str = "id",
  text_column: str = "report",
  words: bool = False,
  anatomy: bool = False,
  part_size: int = DEFAULT_PART_SIZE,
  batch_size: int = 64,
  overwrite: bool = False,
  process_index: int = 0,
  process_count: int = 1,
  barrier=None,
  stop_after_parts: int | None = None,
) -> dict | None:
  """Sentence (and, with `words`, word; with `anatomy`, region-text) embeddings of the reports of
  a CSV, by its id column."""
  import csv

  with open(csv_path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in (id_column, text_column) if c not in (reader.fieldnames or [])]
    if missing:
      raise KeyError(
        f"{csv_path}: no column {', '.join(map(repr, missing))} (columns: {reader.fieldnames})"
      )
    records = [(row[id_column], row[text_column]) for row in reader]
  share = records[process_index::process_count]
  settings, manifest = model_manifest(model, "text", os.path.abspath(csv_path))
  settings.update(words=words, id_column=id_column, text_column=text_column)
  if anatomy:
    settings["anatomy"] = True
  labeler = _labeler(anatomy)
  writer = ExportWriter(
    out_dir, settings, part_size=part_size, process_index=process_index, overwrite=overwrite
  ).open()
  bar = _progress(len(share), writer.rows_done, "export reports")
  try:
    for start in range(writer.rows_done, len(share), batch_size):
      chunk = share[start : start + batch_size]
      out = model.encode_reports([t for _, t in chunk], words=words)
      rows = dict(id=[i for i, _ in chunk], embedding=out.embeddings, report=[t for _, t in chunk])
      if words:
        rows.update(words=out.words, word_mask=out.word_mask)
      if anatomy:
        rows.update(_anatomy_rows(model, [t for _, t in chunk], labeler))
      bar.update(len(chunk))
      if writer.add(rows) >= (stop_after_parts or float("inf")):
        return None
  finally:
    bar.close()
  return writer.close(manifest, process_count=process_count, barrier=barrier)


TFDS_ID_KEYS = ("study_id", "dicom_id", "image_id")


def tfds_row_id(example: Mapping) -> str:
  """A split row's id: its study_id, else its DICOM / image id, else its index in the split."""
  for key in TFDS_ID_KEYS:
    value = example.get(key)
    if isinstance(value, bytes):
      value = value.decode("utf-8")
    if value is not None and str(value):
      return str(value)
  return str(int(example["index"]))


def export_tfds(
  model,
  dataset_dir: str,
  split: str,
  out_dir: str,
  *,
  kind: str = "image",
  regions: bool = False,
  words: bool = False,
  anatomy: bool = False,
  part_size: int = DEFAULT_PART_SIZE,
  batch_size: int = 32,
  overwrite: bool = False,
  process_index: int = 0,
  process_count: int = 1,
  barrier=None,
  stop_after_parts: int | None = None,
) -> dict | None:
  """Image (`kind="image"`, rows carry their report too) or report (`kind="text"`) embeddings of
  a built TFDS split, in the split's stored order, with ids from `tfds_row_id`; this host takes
  its contiguous slice of the split (`TfdsSource`). Images go through the eval view, as in
  training's evaluation. `anatomy` adds, to reports, region-text vectors, weak region codes and
  the region sentences; to images, the region embeddings of the 29 anatomical boxes: the split's
  own `region_boxes` where it stores them (the synthetic set), else the default atlas's
  (docs/alc_itr.md)."""
  import tensorflow as tf

  from data_pipeline.input import TfdsSource
  from data_pipeline.input.preprocess import decode_image, eval_view, uses_native_crop

  if kind not in ("image", "text"):
    raise ValueError(f"export kind must be 'image' or 'text', got {kind!r}")
  try:
    source = TfdsSource(dataset_dir, split)
  except (KeyError, ValueError) as e:  # tfds names the splits it has in a ValueError
    raise KeyError(f"{dataset_dir}: no split {split!r} ({e})") from None
  settings, manifest = model_manifest(model, kind, f"{os.path.abspath(dataset_dir)}:{split}")
  settings.update(regions=regions, words=words)
  own_boxes = anatomy and kind == "image" and "region_boxes" in source.as_dataset().element_spec
  if anatomy:
    settings["anatomy"] = True
    if kind == "image":
      settings["anatomy_boxes"] = manifest["anatomy_boxes"] = (
        "region_boxes" if own_boxes else "atlas"
      )
  labeler = _labeler(anatomy and kind == "text")
  writer = ExportWriter(
    out_dir, settings, part_size=part_size, process_index=process_index, overwrite=overwrite
  ).open()
  size = model.image_size
  native = uses_native_crop(model.config.data.get("augment", "none"))  # as inference's view

  @tf.autograph.experimental.do_not_convert
  def prepare(example):
    row = {k: example[k] for k in ("text", "index", *TFDS_ID_KEYS) if k in example}
    if kind == "image":
      stored = decode_image(example["image"])
      row["image"] = eval_view(stored, size, native_crop=native) * 2 - 1
      if anatomy:  # boxes are normalised on the stored image: pooled through its own view
        row["stored_image"] = stored
        if own_boxes:
          row["region_boxes"] = example["region_boxes"]
    return row

  dataset = (
    source.as_dataset(process_index, process_count)
    .skip(writer.rows_done)
    .map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    .prefetch(2 * batch_size)
  )
  total = source.num_host_examples(process_index, process_count)
  bar = _progress(total, writer.rows_done, f"export {split} {kind}s")
  # Batches restart at every part boundary, so a resumed export encodes the same batches (same
  # shapes, same numbers) as an uninterrupted one.
  pending: list = []
  position = writer.rows_done
  try:
    for example in dataset.as_numpy_iterator():
      pending.append(example)
      position += 1
      if len(pending) == batch_size or position % part_size == 0 or position == total:
        rows = _tfds_rows(model, pending, kind, regions, words)
        if anatomy and kind == "text":
          rows.update(_anatomy_rows(model, rows["report"], labeler))
        elif anatomy:
          rows["anatomy"] = _box_embeddings(model, pending)
        bar.update(len(pending))
        pending = []
        if writer.add(rows) >= (stop_after_parts or float("inf")):
          return None
  finally:
    bar.close()
  return writer.close(manifest, process_count=process_count, barrier=barrier)


def _box_embeddings(model, examples: list) -> np.ndarray:
  """[n, 29, D] region embeddings of examples with a `stored_image` (and `region_boxes`, else the
  default atlas's boxes)."""
  from jimte.anatomy.regions import default_atlas

  atlas = default_atlas()
  return np.stack(
    [model.encode_anatomy(e["stored_image"], e.get("region_boxes", atlas))[0] for e in examples]
  )


def _tfds_rows(model, examples: list, kind: str, regions: bool, words: bool) -> dict:
  ids = [tfds_row_id(e) for e in examples]
  texts = [e["text"].decode("utf-8") for e in examples]
  if kind == "image":
    out = model.encode_image_arrays(np.stack([e["image"] for e in examples]), regions=regions)
    rows = dict(id=ids, embedding=out.embeddings, report=texts)
    if regions:
      rows["regions"] = out.regions
    return rows
  out = model.encode_reports(texts, words=words)
  rows = dict(id=ids, embedding=out.embeddings, report=texts)
  if words:
    rows.update(words=out.words, word_mask=out.word_mask)
  return rows


def tfds_directory(name: str, data_dir: str) -> str:
  """The built dataset directory of `NAME[/CONFIG]` under `data_dir` (jimte.data's lookup)."""
  import ml_collections

  from jimte.data import tfds_dataset_dir

  tfds_name, _, tfds_config = name.partition("/")
  dc = dict(tfds_name=tfds_name, tfds_config=tfds_config, tfds_data_dir=data_dir)
  return tfds_dataset_dir(ml_collections.ConfigDict(dc))


def _barrier() -> None:
  import jax
  from jax.experimental import multihost_utils

  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jimte.export")


def main(argv: list[str] | None = None) -> int:
  """`jimte export`: embeddings of a TFDS split, a folder of images or a CSV of reports."""
  import argparse

  p = argparse.ArgumentParser(prog="jimte export", description=main.__doc__)
  p.add_argument("--workdir", required=True, help="the trained work dir (checkpoints, config)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--out", required=True, help="export directory")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--images", help="folder of image files (PNG/JPEG/DICOM)")
  src.add_argument("--csv", help="CSV of reports")
  src.add_argument("--tfds", help="a built TFDS dataset NAME[/CONFIG] (with --split, --data_dir)")
  p.add_argument("--split", default="test", help="the TFDS split (--tfds)")
  p.add_argument("--data_dir", default="", help="TFDS data dir, or a dataset directory (--tfds)")
  p.add_argument("--kind", choices=("image", "text"), default="image", help="--tfds: what to embed")
  p.add_argument("--id-column", default="id")
  p.add_argument("--text-column", default="report")
  p.add_argument("--regions", action="store_true", help="also region embeddings (images)")
  p.add_argument("--words", action="store_true", help="also word embeddings (reports)")
  p.add_argument(
    "--anatomy",
    action="store_true",
    help="also ALC-ITR's anatomy: region-text vectors of reports, anatomical-region vectors of "
    "images (a TFDS split's own region boxes, else the default atlas)",
  )
  p.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--strict", action="store_true", help="fail on the first bad image file")
  args = p.parse_args(argv)

  import jax

  from jimte.inference import JimteModel

  model = JimteModel.from_workdir(args.workdir, step=args.step)
  hosts = dict(
    process_index=jax.process_index(), process_count=jax.process_count(), barrier=_barrier
  )
  try:
    if args.tfds:
      manifest = export_tfds(
        model,
        tfds_directory(args.tfds, args.data_dir),
        args.split,
        args.out,
        kind=args.kind,
        regions=args.regions,
        words=args.words,
        anatomy=args.anatomy,
        part_size=args.part_size,
        overwrite=args.overwrite,
        **hosts,
      )
    elif args.images:
      manifest = export_folder(
        model,
        args.images,
        args.out,
        regions=args.regions,
        anatomy=args.anatomy,
        part_size=args.part_size,
        overwrite=args.overwrite,
        strict=args.strict,
        **hosts,
      )
    else:
      manifest = export_csv(
        model,
        args.csv,
        args.out,
        id_column=args.id_column,
        text_column=args.text_column,
        words=args.words,
        anatomy=args.anatomy,
        part_size=args.part_size,
        overwrite=args.overwrite,
        **hosts,
      )
  except (ExportExistsError, FileNotFoundError, KeyError, ValueError) as e:
    print(f"jimte export: {e}", file=sys.stderr)
    return 2
  if manifest is not None:
    print(f"{args.out}: {manifest['count']} embeddings, {manifest['n_skipped']} skipped")
  return 0


if __name__ == "__main__":
  sys.exit(main())
