"""The per-study work of the `mimic_cxr` builder, shared by its single-process and Beam builds.

A planned study (`Study`: split, ids, CheXpert labels, its frontal images) becomes examples in
`StudyReader.examples`, the one function both builds run, so they yield the same examples. The
Beam build reads the plan as JSON lines (`Study.to_json` / `Study.from_json`) and counts the
outcomes as Beam metrics (`MetricsLedger`), which the builder adds to its ledger afterwards.

This module is imported by its package name in both builds (`tfds build <path>` imports the
builder module as a top-level `mimic_cxr` package, which Beam workers could not import), so the
objects that Beam pickles and sends to workers live here.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
import zipfile
from collections.abc import Iterator

import numpy as np
from etils import epath

from data_pipeline import imagenome
from data_pipeline.builders import image_io, report_text, sources, validation
from data_pipeline.builders.accounting import SkipLedger

log = logging.getLogger(__name__)

NO_LABELS = "no CheXpert labels"
NO_SCENE_GRAPH = "no Chest ImaGenome scene graph (region_boxes all NaN)"
UNREADABLE_SCENE_GRAPH = "unreadable Chest ImaGenome scene graph (region_boxes all NaN)"
WHOLE_REPORT = "no FINDINGS/IMPRESSION (whole report used)"
METRICS_NAMESPACE = "mimic_cxr"
KINDS = ("kept", "skipped", "notes")

_FINDINGS_HEADERS = frozenset(
  {"FINDINGS", "FINDING", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"}
)
_IMPRESSION_HEADERS = frozenset({"IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS"})
_HEADER = re.compile(r"(?m)^[ \t]*([A-Z][A-Z0-9 ,&/()'-]*?)[ \t]*:")


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


@dataclasses.dataclass(frozen=True)
class Study:
  """One planned study of one split: ids, CheXpert labels (None: no row) and its images.

  `images` holds `(dicom_id, ViewPosition)` pairs in metadata order.
  """

  split: str
  subject_id: str
  study_id: str
  labels: tuple[float, ...] | None
  images: tuple[tuple[str, str], ...]

  def to_json(self) -> str:
    """One JSON line (NaN labels are written as JSON's `NaN`, which `from_json` reads)."""
    return json.dumps(
      [self.split, self.subject_id, self.study_id, self.labels, [list(i) for i in self.images]]
    )

  @classmethod
  def from_json(cls, line: str) -> Study:
    split, subject, study, labels, images = json.loads(line)
    labels = None if labels is None else tuple(float(v) for v in labels)
    return cls(split, subject, study, labels, tuple((d, v) for d, v in images))


@dataclasses.dataclass
class StudyReader:
  """Turns a `Study` into its examples, reading its report once and each image.

  Picklable (Beam sends it to workers): the open report archive is not part of its state.
  """

  root: str
  min_side: int
  max_side: int | None
  resize_side: str
  dataset: str = METRICS_NAMESPACE
  strict: bool = False
  # Chest ImaGenome's scene-graph folder: each example gets `region_boxes` (None: no such feature).
  scene_graphs: str | None = None

  def __post_init__(self):
    self._reports: _ReportStore | None = None
    self._ledger: MetricsLedger | None = None

  def __getstate__(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self.__post_init__()

  @property
  def reports(self) -> _ReportStore:
    if self._reports is None:
      self._reports = _ReportStore(epath.Path(self.root))
    return self._reports

  def image_path(self, study: Study, dicom_id: str) -> epath.Path:
    subject = study.subject_id
    return (
      epath.Path(self.root)
      / "files"
      / f"p{subject[:2]}"
      / f"p{subject}"
      / f"s{study.study_id}"
      / f"{dicom_id}.jpg"
    )

  def examples(self, study: Study, ledger: SkipLedger) -> Iterator[tuple[str, dict]]:
    """(dicom_id, example) of each usable image of `study`; the rest counted in `ledger`."""
    split = study.split
    try:
      findings, impression, text, found = self.reports.read(study.subject_id, study.study_id)
    except validation.RecordRejected as e:  # e.detail is the report's location.
      for dicom_id, _ in study.images:
        ledger.reject(split, e.reason, dicom_id, source=e.detail)
      return
    if study.labels is None:
      labels = sources.chexpert_vector(None)
    else:
      labels = np.asarray(study.labels, np.float32)
    for dicom_id, view in study.images:
      path = self.image_path(study, dicom_id)
      try:
        loaded = image_io.load_grayscale_image(
          path, min_side=self.min_side, max_side=self.max_side, resize_side=self.resize_side
        )
      except validation.RecordRejected as e:
        ledger.reject(split, e.reason, dicom_id, source=path, detail=e.detail)
        continue
      if loaded.converted:
        ledger.note(split, f"image converted from mode {loaded.original_mode}")
      if not found:
        ledger.note(split, WHOLE_REPORT)
      if study.labels is None:
        ledger.note(split, NO_LABELS)
      extra = {}
      if self.scene_graphs is not None:
        extra["region_boxes"] = self.region_boxes(dicom_id, loaded.original_size, split, ledger)
      ledger.accept(split)
      yield (
        dicom_id,
        {
          **extra,
          "image": loaded.array,
          "text": text,
          "findings": findings,
          "impression": impression,
          "study_id": f"s{study.study_id}",
          "patient_id": f"p{study.subject_id}",
          "dicom_id": dicom_id,
          "view_position": view,
          "labels": labels.copy(),
        },
      )

  def region_boxes(
    self, dicom_id: str, size: tuple[int, int], split: str, ledger: SkipLedger
  ) -> np.ndarray:
    """float32 [29, 4] normalised boxes of the image's scene graph (NaN rows where a region is
    absent; all NaN, noted, where the image has no scene graph or an unreadable one). `size` is
    the stored JPEG's (width, height): MIMIC-CXR-JPG keeps the DICOM's resolution, which the
    scene graphs' pixel boxes are in."""
    path = epath.Path(self.scene_graphs) / (dicom_id + imagenome.SCENE_GRAPH_SUFFIX)
    empty = np.full((imagenome.NUM_REGIONS, 4), np.nan, np.float32)
    if not path.exists():
      ledger.note(split, NO_SCENE_GRAPH)
      return empty
    notes = collections.Counter()
    width, height = size
    try:
      graph_id, boxes = imagenome.read_scene_graph(
        str(path), {dicom_id: (height, width)}, notes=notes
      )
    except imagenome.SceneGraphError as e:
      log.warning("%s", e)
      ledger.note(split, UNREADABLE_SCENE_GRAPH)
      return empty
    if graph_id != dicom_id:
      ledger.note(split, UNREADABLE_SCENE_GRAPH)
      return empty
    for note, count in notes.items():
      for _ in range(count):
        ledger.note(split, f"scene graph: {note}")
    return boxes

  def beam_examples(self, line: str) -> Iterator[tuple[str, dict]]:
    """`examples` of one JSON plan line, counting outcomes as Beam metrics (runs on workers)."""
    if self._ledger is None:
      self._ledger = MetricsLedger(self.dataset, strict=self.strict)
    yield from self.examples(Study.from_json(line), self._ledger)


def metric_name(split: str, kind: str, reason: str = "") -> str:
  """Name of the Beam counter of one (split, kind, reason); `parse_metric_name` inverts it."""
  return f"{split}:{kind}:{reason}"


def parse_metric_name(name: str) -> tuple[str, str, str]:
  split, kind, reason = name.split(":", 2)
  if kind not in KINDS:
    raise ValueError(f"not a {METRICS_NAMESPACE} accounting counter: {name!r}")
  return split, kind, reason


class MetricsLedger(SkipLedger):
  """A `SkipLedger` (logging, strict mode) that also counts every outcome as a Beam counter."""

  def _count(self, split: str | None, kind: str, reason: str = "") -> None:
    from apache_beam.metrics import Metrics  # only on the Beam path

    name = metric_name(split or "(unassigned)", kind, reason)
    Metrics.counter(METRICS_NAMESPACE, name).inc()

  def accept(self, split: str) -> None:
    super().accept(split)
    self._count(split, "kept")

  def reject(self, split, reason, key, *, source=None, detail="") -> None:
    super().reject(split, reason, key, source=source, detail=detail)
    self._count(split, "skipped", reason)

  def note(self, split: str | None, what: str) -> None:
    super().note(split, what)
    self._count(split, "notes", what)


class _ReportStore:
  """Reads study reports from folders or from mimic-cxr-reports.zip (opened on first use)."""

  def __init__(self, root: epath.Path):
    self._dirs = [d for d in (root / "mimic-cxr-reports" / "files", root / "files") if d.is_dir()]
    self._zip_path = root / "mimic-cxr-reports.zip"
    self._zip: zipfile.ZipFile | None = None
    self._zip_names: dict[str, str] = {}
    if self._zip_path.exists():
      self._zip = zipfile.ZipFile(self._zip_path.open("rb"))
      for name in self._zip.namelist():
        if name.endswith(".txt"):
          self._zip_names[name.rsplit("/", 1)[-1]] = name

  def read(self, subject: str, study: str) -> tuple[str, str, str, bool]:
    """(findings, impression, text, sections_found); raises RecordRejected.

    A rejection's `detail` holds the report path (used as the 'file' in messages).
    """
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
