"""TFDS builder for MIMIC-CXR-JPG 2.x (chest X-ray JPEGs + free-text radiology reports).

Source: Johnson et al., MIMIC-CXR-JPG (PhysioNet, credentialed access:
https://physionet.org/content/mimic-cxr-jpg/). Nothing is downloaded: the data must be placed in
`--manual_dir` under the PhysioNet data use agreement.

`--manual_dir` layout (the PhysioNet layout; the folder holding the CSVs may also be up to
four levels below `manual_dir`, e.g. `physionet.org/files/mimic-cxr-jpg/2.0.0/`)::

    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split
    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, ...
    mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, <14 observations>
    files/pXX/pSUBJECT/sSTUDY/DICOM.jpg
    reports, one of:
      mimic-cxr-reports/files/pXX/pSUBJECT/sSTUDY.txt    (MIMIC-CXR's mimic-cxr-reports.zip,
      extracted) files/pXX/pSUBJECT/sSTUDY.txt                      (reports next to the image
      folders) mimic-cxr-reports.zip                              (read in place)

One example per frontal image (`ViewPosition` `PA` or `AP`; other views are excluded as
`not frontal view`), in the official split (`validate` is named `validation`; images absent
from the split file are excluded as `not in official split`). Images of one study share
`study_id` (`s<study_id>`) and the report; `patient_id` is `p<subject_id>`.

`labels` are the 14 CheXpert observations of the study in
`data_pipeline.names.CHEXPERT_OBSERVATIONS` order: 1 positive, 0 negative,
-1 uncertain, NaN blank. A study missing from the CheXpert file gets all-NaN labels (counted in
the notes as `no CheXpert labels`).

`text` is the FINDINGS section followed by the IMPRESSION section (`FINDINGS AND
IMPRESSION` counts as findings; `CONCLUSION` as impression). A section header is an
upper-case phrase at the start of a line followed by a colon; a section runs to the next header.
When a report has neither section, the whole report (whitespace collapsed) is used and counted in
the notes as `no FINDINGS/IMPRESSION (whole report used)`. A missing report file is skipped as
`missing report`; empty or non-UTF-8 reports as `empty report` / `non-UTF-8 report`.

Scale: the CSVs are streamed once into compact per-split lists (about 240k frontal images for
2.0.0); images and reports are read lazily while examples are written, and each report is read
once per study. For a distributed build, the per-image work (`Builder._example_for`) is a
function of one planned record and can be mapped over the plan with a Beam `FlatMap`
(`tfds build ... --beam_pipeline_options`), with the skip counts moved to Beam metrics; the
builder as written generates in one process so the skip accounting stays exact.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import re
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

try:
  from data_pipeline import names
  from data_pipeline.builders import base, image_io, report_text, sources, validation
except ModuleNotFoundError:  # `tfds build <path>` run without `pip install -e .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
  from data_pipeline import names
  from data_pipeline.builders import base, image_io, report_text, sources, validation

NOT_FRONTAL = "not frontal view"
NOT_IN_SPLIT = "not in official split"
NO_LABELS = "no CheXpert labels"
WHOLE_REPORT = "no FINDINGS/IMPRESSION (whole report used)"

CSV_PREFIX = "mimic-cxr-2.0.0-"
_SPLIT_NAMES = {
  "train": "train",
  "validate": "validation",
  "validation": "validation",
  "test": "test",
}
_FINDINGS_HEADERS = frozenset(
  {"FINDINGS", "FINDING", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"}
)
_IMPRESSION_HEADERS = frozenset({"IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS"})
_SHARD_DIR = re.compile(r"^[ps]\d+$")
_HEADER = re.compile(r"(?m)^[ \t]*([A-Z][A-Z0-9 ,&/()'-]*?)[ \t]*:")

_DESCRIPTION = """\
MIMIC-CXR-JPG: frontal chest radiographs with their free-text reports (findings + impression),
CheXpert labels and the official patient-disjoint split.
"""

_CITATION = """\
@article{johnson2019mimicjpg,
  title={MIMIC-CXR-JPG, a large publicly available database of labeled chest radiographs},
  author={Johnson, Alistair EW and Pollard, Tom J and Greenbaum, Nathaniel R and Lungren,
          Matthew P and Deng, Chih-ying and Peng, Yifan and Lu, Zhiyong and Mark, Roger G and
          Berkowitz, Seth J and Horng, Steven},
  journal={arXiv preprint arXiv:1901.07042},
  year={2019}
}
"""


def extract_sections(report: str) -> dict[str, str]:
  """Splits a free-text report into `{HEADER: text}` (whitespace collapsed).

  Text before the first header is stored under `""`; repeated headers are concatenated.
  """
  sections: dict[str, list[str]] = collections.defaultdict(list)
  matches = list(_HEADER.finditer(report))
  starts = [(m.start(), m.end(), m.group(1).strip()) for m in matches]
  preamble_end = starts[0][0] if starts else len(report)
  sections[""].append(report[:preamble_end])
  for i, (_, body_start, name) in enumerate(starts):
    body_end = starts[i + 1][0] if i + 1 < len(starts) else len(report)
    sections[name].append(report[body_start:body_end])
  cleaned = {name: report_text.clean_text(" ".join(parts)) for name, parts in sections.items()}
  if not cleaned[""]:
    del cleaned[""]
  return cleaned


def findings_and_impression(report: str) -> tuple[str, str, bool]:
  """(findings, impression, found): `found` is False when neither section exists."""
  sections = extract_sections(report)
  findings = " ".join(v for k, v in sections.items() if k in _FINDINGS_HEADERS and v)
  impression = " ".join(v for k, v in sections.items() if k in _IMPRESSION_HEADERS and v)
  return findings, impression, bool(findings or impression)


@dataclasses.dataclass(eq=False)
class MimicCxrConfig(base.ImageBuilderConfig):
  """Config of `Builder`.

  Attributes:
    views: accepted `ViewPosition` values (default: the frontal `PA` and `AP`).
  """

  views: Sequence[str] = ("PA", "AP")

  def __post_init__(self):
    super().__post_init__()
    self.views = tuple(str(v).strip().upper() for v in self.views)


@dataclasses.dataclass(frozen=True)
class _Image:
  dicom_id: str
  subject_id: str
  study_id: str
  view: str


class Builder(base.ValidatingBuilder):
  """MIMIC-CXR-JPG frontal images with report findings/impression and CheXpert labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    MimicCxrConfig(
      name="frontal",
      description="PA/AP images, official split, longer side <= 2048 px.",
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "frontal"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download MIMIC-CXR-JPG 2.x from https://physionet.org/content/mimic-cxr-jpg/ (credentialed
    access) and the reports (`mimic-cxr-reports.zip`) from
    https://physionet.org/content/mimic-cxr/. Pass as `--manual_dir` the folder holding
    mimic-cxr-2.0.0-{split,metadata,chexpert}.csv.gz and `files/`; put the reports there as
    `mimic-cxr-reports.zip`, as the extracted `mimic-cxr-reports/files/...`, or as
    `files/pXX/pSUBJECT/sSTUDY.txt` next to the image folders.
    """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": image_io.image_feature(
            self.builder_config.image_encoding, "frontal chest X-ray"
          ),
          "text": tfds.features.Text(doc="FINDINGS then IMPRESSION"),
          "findings": tfds.features.Text(),
          "impression": tfds.features.Text(),
          "study_id": tfds.features.Text(doc="s<study_id>"),
          "patient_id": tfds.features.Text(doc="p<subject_id>"),
          "dicom_id": tfds.features.Text(),
          "view_position": tfds.features.Text(doc="PA or AP"),
          "labels": tfds.features.Tensor(
            shape=(len(names.CHEXPERT_OBSERVATIONS),),
            dtype=np.float32,
            doc="CheXpert: 1 pos, 0 neg, -1 uncertain, NaN blank; order: "
            + ", ".join(names.CHEXPERT_OBSERVATIONS),
          ),
        }
      ),
      homepage="https://physionet.org/content/mimic-cxr-jpg/",
      citation=_CITATION,
      metadata=tfds.core.MetadataDict(),
    )

  # ------------------------------------------------------------------ sources
  @staticmethod
  def _find_root(manual: epath.Path) -> epath.Path:
    """The folder holding the MIMIC-CXR-JPG CSVs (breadth-first, <= 4 levels below).

    The per-patient image and report shards (`pXX`, `pSUBJECT`, `sSTUDY`) are never
    entered, so the search stays cheap on the full archive.
    """
    frontier = [manual]
    for _ in range(5):
      next_frontier = []
      for folder in frontier:
        if sources.find_first(
          folder, (CSV_PREFIX + "metadata.csv.gz", CSV_PREFIX + "metadata.csv")
        ):
          return folder
        next_frontier += [
          p for p in sorted(folder.iterdir()) if p.is_dir() and not _SHARD_DIR.match(p.name)
        ]
      frontier = next_frontier
    raise FileNotFoundError(
      f"No {CSV_PREFIX}metadata.csv[.gz] under {manual}.\n{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )

  @staticmethod
  def _csv(root: epath.Path, name: str) -> Iterator[dict[str, str]]:
    path = sources.find_first(root, (f"{CSV_PREFIX}{name}.csv.gz", f"{CSV_PREFIX}{name}.csv"))
    if path is None:
      raise FileNotFoundError(f"{CSV_PREFIX}{name}.csv[.gz] not found in {root}")
    with path.open("rb") as raw:
      stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
      yield from csv.DictReader(io.TextIOWrapper(stream, encoding="utf-8", newline=""))

  # ------------------------------------------------------------------ planning
  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    self._new_ledger()
    root = self._find_root(epath.Path(dl_manager.manual_dir))
    official: dict[str, str] = {}
    for row in self._csv(root, "split"):
      split = _SPLIT_NAMES.get((row.get("split") or "").strip().lower())
      if split is not None:
        official[row["dicom_id"].strip()] = split
    labels: dict[str, np.ndarray] = {}
    for row in self._csv(root, "chexpert"):
      labels[row["study_id"].strip()] = sources.chexpert_vector(row)
    plan = self._plan(root, official)
    self._report_unassigned()
    reports = _ReportStore(root)
    return {
      name: self._generate_examples(
        split=name, root=root, images=images, labels=labels, reports=reports
      )
      for name, images in self._non_empty_splits(plan).items()
    }

  def _plan(self, root: epath.Path, official: dict[str, str]) -> dict[str, list[_Image]]:
    views = set(self.builder_config.views)
    ledger = self.ledger
    plan: dict[str, list[_Image]] = {"train": [], "validation": [], "test": []}
    seen: set[str] = set()
    for row in self._csv(root, "metadata"):
      dicom = (row.get("dicom_id") or "").strip()
      split = official.get(dicom)
      view = (row.get("ViewPosition") or "").strip().upper()
      if view not in views:
        ledger.exclude(split, NOT_FRONTAL, dicom)
        continue
      if split is None:
        ledger.exclude(None, NOT_IN_SPLIT, dicom)
        continue
      if dicom in seen:
        ledger.reject(
          split,
          validation.DUPLICATE_ID,
          dicom,
          source=root / f"{CSV_PREFIX}metadata.csv",
          detail="dicom_id listed twice in the metadata",
        )
        continue
      seen.add(dicom)
      subject = row["subject_id"].strip()
      study = row["study_id"].strip()
      plan[split].append(_Image(dicom, subject, study, view))
    return plan

  # ------------------------------------------------------------------ generation
  def _generate_examples(
    self,
    split: str,
    root: epath.Path,
    images: list[_Image],
    labels: dict[str, np.ndarray],
    reports: _ReportStore,
  ) -> Iterator[tuple[str, dict]]:
    try:
      for image in images:
        example = self._example_for(split, root, image, labels, reports)
        if example is not None:
          yield image.dicom_id, example
    finally:
      self._finish_split(split)
    self._check_split_nonempty(split)

  def _example_for(
    self,
    split: str,
    root: epath.Path,
    image: _Image,
    labels: dict[str, np.ndarray],
    reports: _ReportStore,
  ) -> dict | None:
    """The example of one planned image, or None (counted) when it is unusable."""
    ledger = self.ledger
    try:
      findings, impression, text, found = reports.get(image.subject_id, image.study_id)
    except validation.RecordRejected as e:  # e.detail is the report's location.
      ledger.reject(split, e.reason, image.dicom_id, source=e.detail)
      return None
    path = (
      root
      / "files"
      / f"p{image.subject_id[:2]}"
      / f"p{image.subject_id}"
      / f"s{image.study_id}"
      / f"{image.dicom_id}.jpg"
    )
    try:
      loaded = self._load_image(path)
    except validation.RecordRejected as e:
      ledger.reject(split, e.reason, image.dicom_id, source=path, detail=e.detail)
      return None
    if loaded.converted:
      ledger.note(split, f"image converted from mode {loaded.original_mode}")
    if not found:
      ledger.note(split, WHOLE_REPORT)
    study_labels = labels.get(image.study_id)
    if study_labels is None:
      ledger.note(split, NO_LABELS)
      study_labels = sources.chexpert_vector(None)
    ledger.accept(split)
    return {
      "image": loaded.array,
      "text": text,
      "findings": findings,
      "impression": impression,
      "study_id": f"s{image.study_id}",
      "patient_id": f"p{image.subject_id}",
      "dicom_id": image.dicom_id,
      "view_position": image.view,
      "labels": study_labels,
    }


class _ReportStore:
  """Reads (and caches the last) study report from folders or mimic-cxr-reports.zip."""

  def __init__(self, root: epath.Path):
    self._dirs = [d for d in (root / "mimic-cxr-reports" / "files", root / "files") if d.is_dir()]
    zip_path = root / "mimic-cxr-reports.zip"
    self._zip = zipfile.ZipFile(zip_path.open("rb")) if zip_path.exists() else None
    self._zip_names: dict[str, str] = {}
    if self._zip is not None:
      for name in self._zip.namelist():
        if name.endswith(".txt"):
          self._zip_names[name.rsplit("/", 1)[-1]] = name
    self._last_key: tuple[str, str] | None = None
    self._last_value: tuple | validation.RecordRejected | None = None

  def get(self, subject: str, study: str) -> tuple[str, str, str, bool]:
    """(findings, impression, text, sections_found); raises RecordRejected.

    A rejection's `detail` holds the report path (used as the 'file' in messages).
    """
    key = (subject, study)
    if key != self._last_key:
      self._last_key = key
      try:
        self._last_value = self._read(subject, study)
      except validation.RecordRejected as e:
        self._last_value = e
    if isinstance(self._last_value, validation.RecordRejected):
      raise self._last_value
    return self._last_value

  def _read(self, subject: str, study: str) -> tuple[str, str, str, bool]:
    relative = f"p{subject[:2]}/p{subject}/s{study}.txt"
    raw, where = None, relative
    for folder in self._dirs:
      candidate = folder / relative
      if candidate.exists():
        raw, where = candidate.read_bytes(), str(candidate)
        break
    if raw is None and self._zip is not None:
      member = self._zip_names.get(f"s{study}.txt")
      if member is not None and f"p{subject}/" in member:
        raw, where = self._zip.read(member), f"mimic-cxr-reports.zip:{member}"
    if raw is None:
      raise validation.RecordRejected(validation.MISSING_REPORT, where)
    try:
      report = report_text.decode_report(raw)
    except validation.RecordRejected:
      raise validation.RecordRejected(validation.NON_UTF8_REPORT, where) from None
    findings, impression, found = findings_and_impression(report)
    text = (
      report_text.clean_text(f"{findings} {impression}")
      if found
      else report_text.clean_text(report)
    )
    if not text:
      raise validation.RecordRejected(validation.EMPTY_REPORT, where)
    return findings, impression, text, found
