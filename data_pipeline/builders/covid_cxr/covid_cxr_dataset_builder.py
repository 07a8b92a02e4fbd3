"""TFDS builder for the COVID-19 image data collection (chest X-rays with clinical notes).

Source: Cohen et al., "COVID-19 Image Data Collection: Prospective Predictions Are the Future"
(arXiv:2006.11988), https://github.com/ieee8023/covid-chestxray-dataset. Each image has its own
licence (`license` column); the metadata is CC BY-NC-SA 4.0.

Layout expected in `--manual_dir` (the repository's own layout)::

    metadata.csv            one row per image
    images/<filename>       the image files named by the `filename` column

A `metadata.csv` with an extra `image_file` column (relative path of the image, as in the
resized copy under `shared/data/covid_chestxray`) is also accepted; that column then wins over
`folder`/`filename`.

What one record becomes
-----------------------
* Only `modality == X-ray` rows are used (others: excluded `not X-ray`).
* Config `frontal` (default) keeps PA / AP views (`PA`, `AP`, `AP Supine`, `AP Erect`,
  ...); lateral views are excluded as `lateral view` and rows with a blank or unknown view
  (`''`, `?`) as `unknown view`. Config `all_views` keeps every X-ray.
* `text` is `clinical_notes` with whitespace collapsed; rows without notes are skipped as
  `empty report` (a note with bytes that are not UTF-8: `non-UTF-8 report`).
* Several rows may reference one image file (the collection lists some cases twice under two
  patient ids). The first row (in file order) with a usable note keeps the image; the others are
  skipped as `duplicate image`. The patient ids linked by a shared image are merged into one
  patient *group* for splitting, so one radiograph can never sit in two splits. Two different
  files whose example key (file name without extension, lower case) coincide are skipped as
  `duplicate id`.
* `study_id` is `<patientid>_day<offset>` (images of one patient on one day form a study)
  or `<patientid>_<key>` when the offset is unknown; `patient_id` is `patientid`.
* Split: deterministic by patient group, 70 % train / 10 % validation / 20 % test
  (`data_pipeline.builders.splits.assign_split`, salt `covid_cxr`).

Images are normalised as described in `data_pipeline.builders.image_io` (config knobs
`max_side`, `min_side`, `resize_side`). Skip counts are printed per split and stored in
`metadata.json`. Strict mode: `JIMTE_TFDS_STRICT=1` or `Builder(strict=True)`.

CLI::

    tfds build data_pipeline/builders/covid_cxr --manual_dir DIR --data_dir OUT
    tfds build data_pipeline/builders/covid_cxr --manual_dir DIR --data_dir OUT \\
        --config '{"name": "frontal_512", "max_side": 512}'
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

try:
  from data_pipeline.builders import base, image_io, report_text, sources, splits, validation
except ModuleNotFoundError:  # `tfds build <path>` run without `pip install -e .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
  from data_pipeline.builders import base, image_io, report_text, sources, splits, validation

NOT_XRAY = "not X-ray"
LATERAL_VIEW = "lateral view"
UNKNOWN_VIEW = "unknown view"
MISSING_PATIENT = "missing patient id"

_FRONTAL_WORDS = frozenset({"PA", "AP"})
_LATERAL_WORDS = frozenset({"L", "LL", "RL", "LATERAL", "LAT"})

_DESCRIPTION = """\
Chest X-rays of the COVID-19 image data collection (Cohen et al. 2020) paired with the free-text
clinical notes of each case. Frontal views by default; patient-disjoint deterministic splits.
"""

_CITATION = """\
@article{cohen2020covidProspective,
  title={COVID-19 Image Data Collection: Prospective Predictions Are the Future},
  author={Joseph Paul Cohen and Paul Morrison and Lan Dao and Karsten Roth and Tim Q Duong and
          Marzyeh Ghassemi},
  journal={arXiv 2006.11988},
  year={2020}
}
"""


def view_kind(view: str) -> str:
  """'frontal', 'lateral' or 'unknown' for a `view` cell (`AP Supine` -> frontal)."""
  words = view.replace("-", " ").upper().split()
  if not words:
    return "unknown"
  if words[0] in _FRONTAL_WORDS:
    return "frontal"
  if words[0] in _LATERAL_WORDS:
    return "lateral"
  return "unknown"


@dataclasses.dataclass(eq=False)
class CovidCxrConfig(base.ImageBuilderConfig):
  """Config of `Builder`.

  Attributes:
    frontal_only: keep only PA/AP views (lateral and unknown views are excluded and counted).
    split_fractions: `[[split, fraction], ...]` for the patient-group split.
  """

  frontal_only: bool = True
  split_fractions: Sequence[Sequence] = splits.DEFAULT_SPLIT_FRACTIONS

  def __post_init__(self):
    super().__post_init__()
    self.split_fractions = tuple((str(n), float(f)) for n, f in self.split_fractions)


@dataclasses.dataclass
class _Row:
  key: str
  row_index: int
  patient_id: str
  image_rel: str
  text: str
  finding: str
  view: str
  offset: float
  group: str = ""


class _UnionFind:
  """Groups patient ids linked by a shared image (representative: smallest id)."""

  def __init__(self):
    self._parent: dict[str, str] = {}

  def find(self, x: str) -> str:
    self._parent.setdefault(x, x)
    root = x
    while self._parent[root] != root:
      root = self._parent[root]
    while self._parent[x] != root:
      self._parent[x], x = root, self._parent[x]
    return root

  def union(self, a: str, b: str) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      lo, hi = sorted((ra, rb))
      self._parent[hi] = lo


class Builder(base.ValidatingBuilder):
  """COVID-19 image data collection: chest X-ray + clinical notes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    CovidCxrConfig(
      name="frontal",
      description="PA/AP X-rays only, resized so the longer side is <= 2048 px.",
    ),
    CovidCxrConfig(
      name="all_views",
      frontal_only=False,
      description="Every X-ray view (PA, AP, lateral, unknown).",
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "frontal"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Clone or download https://github.com/ieee8023/covid-chestxray-dataset and pass its root
    (the folder holding `metadata.csv` and `images/`) as `--manual_dir`.
    """

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": image_io.image_feature(config.image_encoding, "grayscale chest X-ray"),
          "text": tfds.features.Text(doc="clinical notes, whitespace collapsed"),
          "study_id": tfds.features.Text(doc="<patientid>_day<offset>"),
          "patient_id": tfds.features.Text(doc="patientid column"),
          "finding": tfds.features.Text(doc="finding column, e.g. COVID-19"),
          "view": tfds.features.Text(doc="view column, e.g. PA, AP Supine, L"),
          "offset_days": tfds.features.Scalar(
            dtype=np.float32, doc="days since symptom onset; NaN if unknown"
          ),
          "image_file": tfds.features.Text(doc="image path relative to manual_dir"),
        }
      ),
      supervised_keys=None,
      homepage="https://github.com/ieee8023/covid-chestxray-dataset",
      citation=_CITATION,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    self._new_ledger()
    root = epath.Path(dl_manager.manual_dir)
    metadata_path = root / "metadata.csv"
    if not metadata_path.exists():
      raise FileNotFoundError(f"{metadata_path} not found.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    rows = self._plan(root, metadata_path)
    fractions = self.builder_config.split_fractions
    per_split: dict[str, list[_Row]] = {name: [] for name, _ in fractions}
    for row in rows:
      per_split[row.group].append(row)
    self._report_unassigned()
    return {
      name: self._generate_examples(split=name, root=root, rows=split_rows)
      for name, split_rows in self._non_empty_splits(per_split).items()
    }

  def _plan(self, root: epath.Path, metadata_path: epath.Path) -> list[_Row]:
    """Reads metadata.csv, applies text/view/duplicate rules, assigns patient-group splits.

    Returns the rows to load, each with `group` set to its split name. Rejections found
    here are recorded in the split of the record's patient group.
    """
    config = self.builder_config
    ledger = self.ledger
    raw_rows = list(sources.read_csv_rows(metadata_path.read_bytes()))
    uf = _UnionFind()
    image_to_patient: dict[str, str] = {}
    xray_rows: list[tuple[int, dict[str, str], str]] = []
    for index, row in enumerate(raw_rows):
      patient = (row.get("patientid") or "").strip()
      image_rel = self._image_rel(row)
      modality = (row.get("modality") or "").replace("-", "").replace(" ", "").lower()
      if modality != "xray":
        ledger.exclude(None, NOT_XRAY, image_rel)
        continue
      if patient:
        uf.find(patient)
        if image_rel in image_to_patient:
          uf.union(patient, image_to_patient[image_rel])
        else:
          image_to_patient[image_rel] = patient
      xray_rows.append((index, row, image_rel))

    def split_of(patient: str) -> str:
      return splits.assign_split(uf.find(patient), config.split_fractions, salt=self.name)

    kept: list[_Row] = []
    seen_images: set[str] = set()
    seen_keys: dict[str, str] = {}
    for index, row, image_rel in xray_rows:
      patient = (row.get("patientid") or "").strip()
      key = Path(image_rel).stem.lower()
      if not patient:
        ledger.reject(
          None,
          MISSING_PATIENT,
          key,
          source=root / image_rel,
          detail=f"metadata.csv row {index + 2} has no patientid",
        )
        continue
      split = split_of(patient)
      view = (row.get("view") or "").strip()
      kind = view_kind(view)
      if config.frontal_only and kind != "frontal":
        ledger.exclude(split, LATERAL_VIEW if kind == "lateral" else UNKNOWN_VIEW, key)
        continue
      try:
        text = report_text.require_text(row.get("clinical_notes"), what="clinical_notes")
      except validation.RecordRejected as e:
        ledger.reject(
          split,
          e.reason,
          key,
          source=metadata_path,
          detail=f"row {index + 2}: {e.detail}",
        )
        continue
      if image_rel in seen_images:
        ledger.reject(
          split,
          validation.DUPLICATE_IMAGE,
          key,
          source=root / image_rel,
          detail=f"metadata.csv row {index + 2} repeats an image already used",
        )
        continue
      if key in seen_keys:
        ledger.reject(
          split,
          validation.DUPLICATE_ID,
          key,
          source=root / image_rel,
          detail=f"same key as {seen_keys[key]}",
        )
        continue
      seen_images.add(image_rel)
      seen_keys[key] = image_rel
      offset = sources.float_or_nan(row.get("offset"))
      kept.append(
        _Row(
          key=key,
          row_index=index,
          patient_id=patient,
          image_rel=image_rel,
          text=text,
          finding=report_text.clean_text(row.get("finding")),
          view=view,
          offset=offset,
          group=split,
        )
      )
    return kept

  @staticmethod
  def _image_rel(row: dict[str, str]) -> str:
    image_file = (row.get("image_file") or "").strip()
    if image_file:
      return image_file
    folder = (row.get("folder") or "").strip() or "images"
    return f"{folder}/{(row.get('filename') or '').strip()}"

  def _generate_examples(
    self, split: str, root: epath.Path, rows: list[_Row]
  ) -> Iterator[tuple[str, dict]]:
    ledger = self.ledger
    try:
      for row in rows:
        path = root / row.image_rel
        try:
          loaded = self._load_image(path)
        except validation.RecordRejected as e:
          ledger.reject(split, e.reason, row.key, source=path, detail=e.detail)
          continue
        if loaded.converted:
          ledger.note(split, f"image converted from mode {loaded.original_mode}")
        if np.isnan(row.offset):
          study_id = f"{row.patient_id}_{row.key}"
        else:
          study_id = f"{row.patient_id}_day{row.offset:g}"
        ledger.accept(split)
        yield (
          row.key,
          {
            "image": loaded.array,
            "text": row.text,
            "study_id": study_id,
            "patient_id": row.patient_id,
            "finding": row.finding,
            "view": row.view,
            "offset_days": np.float32(row.offset),
            "image_file": row.image_rel,
          },
        )
    finally:
      self._finish_split(split)
    self._check_split_nonempty(split)
