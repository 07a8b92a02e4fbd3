"""The Open-i files of the IU X-ray collection: report XML, image names, view tables, R2Gen split.

Pure parsing of what `iu_xray_dataset_builder.Builder` reads (no TFDS state), so that each rule
can be tested on its own.

Each report `ecgen-radiology/<n>.xml` is one study of one patient (`parse_report`). Image ids
and file names (Open-i `CXR1_1_IM-0001-3001.png`, Kaggle `1_IM-0001-3001.dcm.png`) meet on
`canonical_image_key`.

Frontal vs lateral
------------------
The reports do not say which image is which view. Each image gets a projection from, in order
(`read_view_labels`):

1. `indiana_projections.csv` or `projections.csv` in `manual_dir` (Kaggle
   "chest-xrays-indiana-university" table: `uid, filename, projection` with
   `Frontal`/`Lateral`; it covers 7,464 of the 7,470 images and is taken as ground truth);
2. `nlmcxr_dicom_metadata.csv.gz` / `dicom_metadata.csv.gz` (DICOM header dump with
   `imageid` and `View Position`): `LL`, `RL`, `LATERAL`, `LARGE LATERAL` mean
   lateral and `AP` frontal (measured against 1.: 864 of 865 such images agree). `PA` and
   blank are ignored: a third of the images tagged `PA` are laterals;
3. otherwise the view is unknown.

The frontal image is the first image labelled frontal, else the first unlabelled image in report
order; the lateral image is the first other image labelled lateral, else the first other
unlabelled one (`choose_views`). Measured against 1., using 2.+3. picks the frontal image right
in 97.1 % of the studies, report order alone (3.) in 89.3 %: put `projections.csv` in
`manual_dir`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf
from etils import epath

try:
  from data_pipeline.builders import report_text, sources, validation
except ModuleNotFoundError:  # `tfds build <path>` run without `pip install -e .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
  from data_pipeline.builders import report_text, sources, validation

PROJECTION_CSV_NAMES = ("indiana_projections.csv", "projections.csv")
DICOM_METADATA_NAMES = (
  "nlmcxr_dicom_metadata.csv.gz",
  "dicom_metadata.csv.gz",
  "nlmcxr_dicom_metadata.csv",
  "dicom_metadata.csv",
)
R2GEN_NAMES = ("r2gen_annotation.json", "annotation.json")

_DICOM_LATERAL = frozenset({"LL", "RL", "LATERAL", "LARGE LATERAL"})
_DICOM_FRONTAL = frozenset({"AP"})
_R2GEN_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
_STUDY_FROM_R2GEN = re.compile(r"^(CXR\d+)")


def canonical_image_key(name: str) -> str | None:
  """Maps an Open-i image id or a file name to `"<uid>/<IM-part>"`.

  `CXR1_1_IM-0001-3001`, `CXR1_1_IM-0001-3001.png` and the Kaggle name
  `1_IM-0001-3001.dcm.png` all give `"1/IM-0001-3001"`. Returns None for names that do
  not follow the convention.
  """
  stem = name.rsplit("/", 1)[-1]
  for suffix in (".png", ".dcm", ".jpg", ".jpeg"):
    if stem.lower().endswith(suffix):
      stem = stem[: -len(suffix)]
  if stem.upper().startswith("CXR"):
    stem = stem[3:]
  uid, sep, _ = stem.partition("_")
  at = stem.find("IM-")
  if not sep or not uid.isdigit() or at < 0:
    return None
  return f"{int(uid)}/{stem[at:]}"


def study_of_r2gen_id(r2gen_id: str) -> str | None:
  """`CXR2384_IM-0942` -> `CXR2384`."""
  match = _STUDY_FROM_R2GEN.match(r2gen_id.strip())
  return match.group(1) if match else None


@dataclasses.dataclass(frozen=True)
class ParsedReport:
  """The fields of one `ecgen-radiology/<n>.xml`."""

  study_id: str
  comparison: str
  indication: str
  findings: str
  impression: str
  mesh_major: tuple[str, ...]
  mesh_automatic: tuple[str, ...]
  image_ids: tuple[str, ...]


def parse_report(raw: bytes) -> ParsedReport:
  """Parses one Open-i XML report.

  Raises:
    RecordRejected: `non-UTF-8 report` or `malformed report`.
  """
  report_text.decode_report(raw)  # Validates the encoding before the XML parser sees it.
  try:
    root = ET.fromstring(raw)
  except ET.ParseError as e:
    raise validation.RecordRejected(validation.MALFORMED_REPORT, f"XML parse error: {e}") from None
  uid = root.find("uId")
  study_id = (uid.get("id") or "").strip() if uid is not None else ""
  if not study_id:
    raise validation.RecordRejected(validation.MALFORMED_REPORT, "no <uId id=...>")
  sections: dict[str, list[str]] = {}
  for node in root.iter("AbstractText"):
    label = (node.get("Label") or "").strip().upper()
    text = report_text.clean_text("".join(node.itertext()))
    if text:
      sections.setdefault(label, []).append(text)
  mesh = root.find("MeSH")

  def mesh_terms(tag: str) -> tuple[str, ...]:
    if mesh is None:
      return ()
    terms = (report_text.clean_text("".join(n.itertext())) for n in mesh.iter(tag))
    return tuple(t for t in terms if t)

  image_ids = []
  for node in root.iter("parentImage"):
    image_id = (node.get("id") or "").strip()
    if image_id and image_id not in image_ids:
      image_ids.append(image_id)
  return ParsedReport(
    study_id=study_id,
    comparison=" ".join(sections.get("COMPARISON", [])),
    indication=" ".join(sections.get("INDICATION", [])),
    findings=" ".join(sections.get("FINDINGS", [])),
    impression=" ".join(sections.get("IMPRESSION", [])),
    mesh_major=mesh_terms("major"),
    mesh_automatic=mesh_terms("automatic"),
    image_ids=tuple(image_ids),
  )


def choose_views(
  image_ids: Sequence[str], labels: dict[str, tuple[str, str]]
) -> tuple[str | None, str | None, str]:
  """Picks (frontal id, lateral id or None, view_source) for one study (see module doc)."""
  views = []
  for image_id in image_ids:
    label = labels.get(canonical_image_key(image_id) or "")
    views.append((image_id, label[0] if label else None, label[1] if label else None))
  frontal = next((v for v in views if v[1] == "frontal"), None)
  if frontal is None:
    frontal = next((v for v in views if v[1] is None), None)
  if frontal is None:
    return None, None, "projections_csv"
  rest = [v for v in views if v[0] != frontal[0]]
  lateral = next((v for v in rest if v[1] == "lateral"), None)
  if lateral is None:
    lateral = next((v for v in rest if v[1] is None), None)
  return frontal[0], lateral[0] if lateral else None, frontal[2] or "report_order"


def read_view_labels(manual: epath.Path | None) -> dict[str, tuple[str, str]]:
  """canonical image key -> ('frontal' | 'lateral', source), from the tables in `manual`."""
  labels: dict[str, tuple[str, str]] = {}
  if manual is None:
    return labels
  dicom = sources.find_first(manual, DICOM_METADATA_NAMES)
  if dicom is not None:
    for row in csv.DictReader(io.StringIO(sources.read_maybe_gzip(dicom).decode("utf-8"))):
      key = canonical_image_key(row.get("imageid") or "")
      view = (row.get("View Position") or "").strip().upper()
      if key is None:
        continue
      if view in _DICOM_LATERAL:
        labels[key] = ("lateral", "dicom_view_position")
      elif view in _DICOM_FRONTAL:
        labels[key] = ("frontal", "dicom_view_position")
  projections = sources.find_first(manual, PROJECTION_CSV_NAMES)
  if projections is not None:
    for row in csv.DictReader(io.StringIO(projections.read_text(encoding="utf-8-sig"))):
      key = canonical_image_key(row.get("filename") or "")
      projection = (row.get("projection") or "").strip().lower()
      if key is not None and projection in ("frontal", "lateral"):
        labels[key] = (projection, "projections_csv")
  return labels


def read_r2gen_splits(path: epath.Path) -> dict[str, str]:
  """study id -> split name, from the R2Gen annotation file at `path`."""
  annotation = json.loads(path.read_text(encoding="utf-8"))
  splits: dict[str, str] = {}
  for raw_key, entries in annotation.items():
    for entry in entries:
      name = str(entry.get("split") or raw_key).strip().lower()
      if name not in _R2GEN_SPLITS:
        raise ValueError(f"{path}: unknown split {name!r} for {entry.get('id')!r}")
      study = study_of_r2gen_id(str(entry.get("id", "")))
      if study is None:
        raise ValueError(f"{path}: id {entry.get('id')!r} is not like CXR123_IM-...")
      splits[study] = _R2GEN_SPLITS[name]
  return splits


def report_sort_key(path: epath.Path) -> tuple[int, str]:
  """Sort key of `ecgen-radiology/<n>.xml`: numeric order, other names last."""
  stem = path.name.rsplit(".", 1)[0]
  return (int(stem), "") if stem.isdigit() else (sys.maxsize, stem)


def index_pngs(roots: Sequence[epath.Path]) -> dict[str, str]:
  """canonical image key -> path of every PNG under `roots` (the first one found wins)."""
  index: dict[str, str] = {}
  for root in roots:
    for directory, _, files in tf.io.gfile.walk(str(root)):
      for name in sorted(files):
        if not name.lower().endswith(".png"):
          continue
        key = canonical_image_key(name)
        if key is not None:
          index.setdefault(key, f"{directory.rstrip('/')}/{name}")
  return index
