"""TFDS builder for the Indiana University chest X-ray collection (OpenI, "IU X-ray").

Source: Demner-Fushman et al., "Preparing a collection of radiology examinations for
distribution and retrieval", JAMIA 2016; https://openi.nlm.nih.gov/faq#collection.
Licence of reports and images: CC BY-NC-ND 4.0.

Sources, looked up in this order (so nothing is downloaded when `--manual_dir` has it):

* reports: `ecgen-radiology/` in `manual_dir` (or one folder below it), else
  `manual_dir/NLMCXR_reports.tgz` (extracted by the download manager), else a download of
  https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz;
* images: `manual_dir/NLMCXR_png.tgz` (extracted), else every `*.png` anywhere under
  `manual_dir` (Open-i names `CXR1_1_IM-0001-3001.png` or Kaggle names
  `1_IM-0001-3001.dcm.png`), else a download of
  https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz (about 1.3 GB).

Each report `ecgen-radiology/<n>.xml` is one study of one patient: `study_id` is its
`uId` (`CXR123`) and `patient_id` the same id (the collection has one study per patient).
Sections come from `AbstractText` (`COMPARISON`, `INDICATION`, `FINDINGS`,
`IMPRESSION`), labels from `MeSH/major` and `MeSH/automatic`, and the study's images from
the `parentImage` ids. `text` is findings then impression (either may be missing; both
missing: skipped as `empty report`).

Frontal vs lateral
------------------
The reports do not say which image is which view. Each image gets a projection from, in order:

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
unlabelled one. Measured against 1., using 2.+3. picks the frontal image right in 97.1 % of the
studies, report order alone (3.) in 89.3 %: put `projections.csv` in `manual_dir`. A study
whose images are all labelled lateral is excluded as `no frontal image`; a study without
images as `no image listed`. The feature `view_source` records which rule decided.

Splits
------
* `default`: deterministic by patient, 70 % train / 10 % validation / 20 % test
  (`data_pipeline.builders.common.assign_split` on the study id, salt `iu_xray`).
* `r2gen`: the split of R2Gen (Chen et al., EMNLP 2020; train 2,069 / val 296 / test 590),
  read from `manual_dir/r2gen_annotation.json` (or `annotation.json`). Its ids
  (`CXR2384_IM-0942`) map to the study `CXR2384`; studies outside it are excluded as
  `not in R2Gen split`.

Images are normalised as described in `data_pipeline.builders.common` (`max_side`...).
An unusable lateral image does not drop the study: `has_lateral` is False, `image_lateral`
is a 1x1 black placeholder, and the event is counted in the notes. Strict mode:
`JIMTE_TFDS_STRICT=1` or `Builder(strict=True)`.

CLI::

    tfds build data_pipeline/builders/iu_xray --manual_dir DIR --data_dir OUT --config r2gen
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

try:
  from data_pipeline.builders import common
except ModuleNotFoundError:  # `tfds build <path>` run without `pip install -e .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
  from data_pipeline.builders import common

REPORTS_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz"
IMAGES_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz"

NO_IMAGE_LISTED = "no image listed"
NO_FRONTAL_IMAGE = "no frontal image"
NOT_IN_R2GEN = "not in R2Gen split"

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

_DESCRIPTION = """\
Indiana University chest X-ray collection (Open-i): 3,955 radiology reports with frontal and
lateral chest radiographs. One example per study: frontal image, lateral image (if any) and the
report sections.
"""

_CITATION = """\
@article{demner2016preparing,
  title={Preparing a collection of radiology examinations for distribution and retrieval},
  author={Demner-Fushman, Dina and Kohli, Marc D and Rosenman, Marc B and Shooshan, Sonya E and
          Rodriguez, Laritza and Antani, Sameer and Thoma, George R and McDonald, Clement J},
  journal={Journal of the American Medical Informatics Association},
  volume={23}, number={2}, pages={304--310}, year={2016}
}
"""


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
  common.decode_report(raw)  # Validates the encoding before the XML parser sees it.
  try:
    root = ET.fromstring(raw)
  except ET.ParseError as e:
    raise common.RecordRejected(common.MALFORMED_REPORT, f"XML parse error: {e}") from None
  uid = root.find("uId")
  study_id = (uid.get("id") or "").strip() if uid is not None else ""
  if not study_id:
    raise common.RecordRejected(common.MALFORMED_REPORT, "no <uId id=...>")
  sections: dict[str, list[str]] = {}
  for node in root.iter("AbstractText"):
    label = (node.get("Label") or "").strip().upper()
    text = common.clean_text("".join(node.itertext()))
    if text:
      sections.setdefault(label, []).append(text)
  mesh = root.find("MeSH")

  def mesh_terms(tag: str) -> tuple[str, ...]:
    if mesh is None:
      return ()
    terms = (common.clean_text("".join(n.itertext())) for n in mesh.iter(tag))
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


@dataclasses.dataclass(eq=False)
class IuXrayConfig(common.ImageBuilderConfig):
  """Config of `Builder`.

  Attributes:
    split_scheme: `"patient"` (hash of the patient id) or `"r2gen"`.
    split_fractions: `[[split, fraction], ...]` for `split_scheme="patient"`.
  """

  split_scheme: str = "patient"
  split_fractions: Sequence[Sequence] = common.DEFAULT_SPLIT_FRACTIONS

  def __post_init__(self):
    super().__post_init__()
    if self.split_scheme not in ("patient", "r2gen"):
      raise ValueError(f"split_scheme must be 'patient' or 'r2gen', got {self.split_scheme!r}")
    self.split_fractions = tuple((str(n), float(f)) for n, f in self.split_fractions)


@dataclasses.dataclass
class _Study:
  report: ParsedReport
  source: str
  split: str
  text: str
  frontal_id: str
  lateral_id: str | None
  view_source: str


class Builder(common.ValidatingBuilder):
  """Indiana University chest X-ray collection: frontal + lateral image and report."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    IuXrayConfig(
      name="default",
      description="Patient-disjoint 70/10/20 split by hash; longer side <= 2048 px.",
    ),
    IuXrayConfig(
      name="r2gen",
      split_scheme="r2gen",
      description="R2Gen train/val/test split (needs r2gen_annotation.json).",
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "default"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Optional for the `default` config (the archives are downloaded from Open-i when absent).
    Put in `--manual_dir` any of:
      * NLMCXR_reports.tgz, or its extracted `ecgen-radiology/` folder;
      * NLMCXR_png.tgz, or the extracted PNGs (any folder layout; Open-i or Kaggle file names);
      * indiana_projections.csv / projections.csv (Kaggle table of Frontal/Lateral views) and/or
        nlmcxr_dicom_metadata.csv.gz, to pick the frontal image reliably;
      * r2gen_annotation.json (R2Gen's `annotation.json`), required by the `r2gen` config.
    """

  def _info(self) -> tfds.core.DatasetInfo:
    encoding = self.builder_config.image_encoding
    return tfds.core.DatasetInfo(
      builder=self,
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": common.image_feature(encoding, "frontal chest X-ray"),
          "image_lateral": common.image_feature(
            encoding, "lateral view; 1x1 black if has_lateral is False"
          ),
          "has_lateral": tfds.features.Scalar(dtype=np.bool_),
          "text": tfds.features.Text(doc="findings then impression"),
          "findings": tfds.features.Text(),
          "impression": tfds.features.Text(),
          "indication": tfds.features.Text(),
          "comparison": tfds.features.Text(),
          "mesh_major": tfds.features.Sequence(tfds.features.Text()),
          "mesh_automatic": tfds.features.Sequence(tfds.features.Text()),
          "study_id": tfds.features.Text(doc="Open-i uId, e.g. CXR123"),
          "patient_id": tfds.features.Text(doc="= study_id (one study per patient)"),
          "image_id": tfds.features.Text(doc="Open-i id of the frontal image"),
          "image_lateral_id": tfds.features.Text(doc="'' when has_lateral is False"),
          "view_source": tfds.features.Text(
            doc="projections_csv | dicom_view_position | report_order"
          ),
        }
      ),
      homepage="https://openi.nlm.nih.gov/faq#collection",
      citation=_CITATION,
      metadata=tfds.core.MetadataDict(),
    )

  # ------------------------------------------------------------------ sources
  def _reports_dir(self, manual: epath.Path | None, dl_manager) -> epath.Path:
    if manual is not None:
      candidates = [manual / "ecgen-radiology"]
      candidates += [p / "ecgen-radiology" for p in sorted(manual.iterdir()) if p.is_dir()]
      for candidate in candidates:
        if candidate.is_dir():
          return candidate
      archive = common.find_first(manual, ("NLMCXR_reports.tgz", "NLMCXR_reports.tar.gz"))
      if archive is not None:
        return epath.Path(dl_manager.extract(archive)) / "ecgen-radiology"
    return epath.Path(dl_manager.download_and_extract(REPORTS_URL)) / "ecgen-radiology"

  def _image_index(self, manual: epath.Path | None, dl_manager) -> dict[str, str]:
    """canonical image key -> path of every PNG found (see `canonical_image_key`)."""
    roots: list[epath.Path] = []
    if manual is not None:
      archive = common.find_first(manual, ("NLMCXR_png.tgz", "NLMCXR_png.tar.gz"))
      roots.append(epath.Path(dl_manager.extract(archive)) if archive else manual)
    index = _index_pngs(roots)
    if not index:
      index = _index_pngs([epath.Path(dl_manager.download_and_extract(IMAGES_URL))])
    return index

  @staticmethod
  def _projection_labels(manual: epath.Path | None) -> dict[str, tuple[str, str]]:
    """canonical image key -> ('frontal' | 'lateral', source)."""
    labels: dict[str, tuple[str, str]] = {}
    if manual is None:
      return labels
    dicom = common.find_first(manual, DICOM_METADATA_NAMES)
    if dicom is not None:
      for row in csv.DictReader(io.StringIO(common.read_maybe_gzip(dicom).decode("utf-8"))):
        key = canonical_image_key(row.get("imageid") or "")
        view = (row.get("View Position") or "").strip().upper()
        if key is None:
          continue
        if view in _DICOM_LATERAL:
          labels[key] = ("lateral", "dicom_view_position")
        elif view in _DICOM_FRONTAL:
          labels[key] = ("frontal", "dicom_view_position")
    projections = common.find_first(manual, PROJECTION_CSV_NAMES)
    if projections is not None:
      for row in csv.DictReader(io.StringIO(projections.read_text(encoding="utf-8-sig"))):
        key = canonical_image_key(row.get("filename") or "")
        projection = (row.get("projection") or "").strip().lower()
        if key is not None and projection in ("frontal", "lateral"):
          labels[key] = (projection, "projections_csv")
    return labels

  def _r2gen_splits(self, manual: epath.Path | None) -> dict[str, str]:
    """study id -> split name, from the R2Gen annotation file."""
    path = common.find_first(manual, R2GEN_NAMES) if manual is not None else None
    if path is None:
      raise FileNotFoundError(
        f"The r2gen config needs one of {R2GEN_NAMES} in --manual_dir "
        f"(got {manual}).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
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

  # ------------------------------------------------------------------ planning
  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    self._new_ledger()
    config = self.builder_config
    manual = common.optional_manual_dir(dl_manager)
    r2gen = self._r2gen_splits(manual) if config.split_scheme == "r2gen" else None
    split_names = (
      ["train", "validation", "test"]
      if r2gen is not None
      else [name for name, _ in config.split_fractions]
    )
    reports_dir = self._reports_dir(manual, dl_manager)
    if not reports_dir.is_dir():
      raise FileNotFoundError(f"No ecgen-radiology/ folder at {reports_dir}")
    labels = self._projection_labels(manual)
    image_index = self._image_index(manual, dl_manager)
    studies = self._plan(reports_dir, labels, r2gen)
    self._report_unassigned()
    per_split: dict[str, list[_Study]] = {name: [] for name in split_names}
    for study in studies:
      per_split[study.split].append(study)
    return {
      name: self._generate_examples(split=name, studies=rows, image_index=image_index)
      for name, rows in self._non_empty_splits(per_split).items()
    }

  def _plan(
    self,
    reports_dir: epath.Path,
    labels: dict[str, tuple[str, str]],
    r2gen: dict[str, str] | None,
  ) -> list[_Study]:
    config = self.builder_config
    ledger = self.ledger
    seen_studies: dict[str, str] = {}
    seen_images: dict[str, str] = {}
    studies: list[_Study] = []
    for path in sorted(reports_dir.glob("*.xml"), key=_numeric_name):
      try:
        report = parse_report(path.read_bytes())
      except common.RecordRejected as e:
        ledger.reject(None, e.reason, path.name, source=path, detail=e.detail)
        continue
      study_id = report.study_id
      if r2gen is not None:
        split = r2gen.get(study_id)
        if split is None:
          ledger.exclude(None, NOT_IN_R2GEN, study_id)
          continue
      else:
        split = common.assign_split(study_id, config.split_fractions, salt=self.name)
      if study_id in seen_studies:
        ledger.reject(
          split,
          common.DUPLICATE_ID,
          study_id,
          source=path,
          detail=f"already defined by {seen_studies[study_id]}",
        )
        continue
      seen_studies[study_id] = path.name
      text = common.clean_text(f"{report.findings} {report.impression}")
      if not text:
        ledger.reject(
          split,
          common.EMPTY_REPORT,
          study_id,
          source=path,
          detail="no FINDINGS and no IMPRESSION text",
        )
        continue
      if not report.image_ids:
        ledger.exclude(split, NO_IMAGE_LISTED, study_id)
        continue
      shared = [i for i in report.image_ids if i in seen_images]
      if shared:
        ledger.reject(
          split,
          common.DUPLICATE_IMAGE,
          study_id,
          source=path,
          detail=f"image {shared[0]} already belongs to {seen_images[shared[0]]}",
        )
        continue
      for image_id in report.image_ids:
        seen_images[image_id] = study_id
      frontal, lateral, view_source = choose_views(report.image_ids, labels)
      if frontal is None:
        ledger.exclude(split, NO_FRONTAL_IMAGE, study_id)
        continue
      studies.append(_Study(report, str(path), split, text, frontal, lateral, view_source))
    return studies

  # ------------------------------------------------------------------ generation
  def _generate_examples(
    self, split: str, studies: list[_Study], image_index: dict[str, str]
  ) -> Iterator[tuple[str, dict]]:
    ledger = self.ledger
    try:
      for study in studies:
        report = study.report
        frontal_path = image_index.get(canonical_image_key(study.frontal_id) or "")
        try:
          if frontal_path is None:
            raise common.RecordRejected(
              common.MISSING_IMAGE, f"no PNG for image id {study.frontal_id}"
            )
          frontal = self._load_image(frontal_path)
        except common.RecordRejected as e:
          ledger.reject(
            split,
            e.reason,
            report.study_id,
            source=frontal_path or study.frontal_id,
            detail=e.detail,
          )
          continue
        if frontal.converted:
          ledger.note(split, f"image converted from mode {frontal.original_mode}")
        lateral_array = np.zeros((1, 1, 1), np.uint8)
        lateral_id = ""
        if study.lateral_id is not None:
          lateral_path = image_index.get(canonical_image_key(study.lateral_id) or "")
          try:
            if lateral_path is None:
              raise common.RecordRejected(common.MISSING_IMAGE, study.lateral_id)
            lateral = self._load_image(lateral_path)
            lateral_array, lateral_id = lateral.array, study.lateral_id
            if lateral.converted:
              ledger.note(split, f"image converted from mode {lateral.original_mode}")
          except common.RecordRejected as e:
            ledger.note(split, f"lateral dropped: {e.reason}")
        ledger.accept(split)
        yield (
          report.study_id,
          {
            "image": frontal.array,
            "image_lateral": lateral_array,
            "has_lateral": bool(lateral_id),
            "text": study.text,
            "findings": report.findings,
            "impression": report.impression,
            "indication": report.indication,
            "comparison": report.comparison,
            "mesh_major": list(report.mesh_major),
            "mesh_automatic": list(report.mesh_automatic),
            "study_id": report.study_id,
            "patient_id": report.study_id,
            "image_id": study.frontal_id,
            "image_lateral_id": lateral_id,
            "view_source": study.view_source,
          },
        )
    finally:
      self._finish_split(split)
    self._check_split_nonempty(split)


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


def _numeric_name(path: epath.Path) -> tuple[int, str]:
  stem = path.name.rsplit(".", 1)[0]
  return (int(stem), "") if stem.isdigit() else (sys.maxsize, stem)


def _index_pngs(roots: Sequence[epath.Path]) -> dict[str, str]:
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
