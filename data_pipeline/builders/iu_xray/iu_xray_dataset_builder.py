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
The reports do not say which image is which view: each image's projection comes from the
projection table or the DICOM view positions in `manual_dir`, else report order (the rules and
their measured accuracy are in `data_pipeline.builders.iu_xray.openi`; put `projections.csv` in
`manual_dir`). A study whose images are all labelled lateral is excluded as `no frontal
image`; a study without images as `no image listed`. The feature `view_source` records which
rule decided.

Splits
------
* `default`: deterministic by patient, 70 % train / 10 % validation / 20 % test
  (`data_pipeline.builders.splits.assign_split` on the study id, salt `iu_xray`).
* `r2gen`: the split of R2Gen (Chen et al., EMNLP 2020; train 2,069 / val 296 / test 590),
  read from `manual_dir/r2gen_annotation.json` (or `annotation.json`). Its ids
  (`CXR2384_IM-0942`) map to the study `CXR2384`; studies outside it are excluded as
  `not in R2Gen split`.

Images are normalised as described in `data_pipeline.builders.image_io` (`max_side`...).
An unusable lateral image does not drop the study: `has_lateral` is False, `image_lateral`
is a 1x1 black placeholder, and the event is counted in the notes. Strict mode:
`JIMTE_TFDS_STRICT=1` or `Builder(strict=True)`.

CLI::

    tfds build data_pipeline/builders/iu_xray --manual_dir DIR --data_dir OUT --config r2gen
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

from . import openi

REPORTS_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz"
IMAGES_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz"

NO_IMAGE_LISTED = "no image listed"
NO_FRONTAL_IMAGE = "no frontal image"
NOT_IN_R2GEN = "not in R2Gen split"

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


@dataclasses.dataclass(eq=False)
class IuXrayConfig(base.ImageBuilderConfig):
  """Config of `Builder`.

  Attributes:
    split_scheme: `"patient"` (hash of the patient id) or `"r2gen"`.
    split_fractions: `[[split, fraction], ...]` for `split_scheme="patient"`.
  """

  split_scheme: str = "patient"
  split_fractions: Sequence[Sequence] = splits.DEFAULT_SPLIT_FRACTIONS

  def __post_init__(self):
    super().__post_init__()
    if self.split_scheme not in ("patient", "r2gen"):
      raise ValueError(f"split_scheme must be 'patient' or 'r2gen', got {self.split_scheme!r}")
    self.split_fractions = tuple((str(n), float(f)) for n, f in self.split_fractions)


@dataclasses.dataclass
class _Study:
  report: openi.ParsedReport
  source: str
  split: str
  text: str
  frontal_id: str
  lateral_id: str | None
  view_source: str


class Builder(base.ValidatingBuilder):
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
          "image": image_io.image_feature(encoding, "frontal chest X-ray"),
          "image_lateral": image_io.image_feature(
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
      archive = sources.find_first(manual, ("NLMCXR_reports.tgz", "NLMCXR_reports.tar.gz"))
      if archive is not None:
        return epath.Path(dl_manager.extract(archive)) / "ecgen-radiology"
    return epath.Path(dl_manager.download_and_extract(REPORTS_URL)) / "ecgen-radiology"

  def _image_index(self, manual: epath.Path | None, dl_manager) -> dict[str, str]:
    """canonical image key -> path of every PNG found (see `openi.canonical_image_key`)."""
    roots: list[epath.Path] = []
    if manual is not None:
      archive = sources.find_first(manual, ("NLMCXR_png.tgz", "NLMCXR_png.tar.gz"))
      roots.append(epath.Path(dl_manager.extract(archive)) if archive else manual)
    index = openi.index_pngs(roots)
    if not index:
      index = openi.index_pngs([epath.Path(dl_manager.download_and_extract(IMAGES_URL))])
    return index

  def _r2gen_splits(self, manual: epath.Path | None) -> dict[str, str]:
    """study id -> split name, from the R2Gen annotation file."""
    path = sources.find_first(manual, openi.R2GEN_NAMES) if manual is not None else None
    if path is None:
      raise FileNotFoundError(
        f"The r2gen config needs one of {openi.R2GEN_NAMES} in --manual_dir "
        f"(got {manual}).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
    return openi.read_r2gen_splits(path)

  # ------------------------------------------------------------------ planning
  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    self._new_ledger()
    config = self.builder_config
    manual = sources.optional_manual_dir(dl_manager)
    r2gen = self._r2gen_splits(manual) if config.split_scheme == "r2gen" else None
    split_names = (
      ["train", "validation", "test"]
      if r2gen is not None
      else [name for name, _ in config.split_fractions]
    )
    reports_dir = self._reports_dir(manual, dl_manager)
    if not reports_dir.is_dir():
      raise FileNotFoundError(f"No ecgen-radiology/ folder at {reports_dir}")
    labels = openi.read_view_labels(manual)
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
    for path in sorted(reports_dir.glob("*.xml"), key=openi.report_sort_key):
      try:
        report = openi.parse_report(path.read_bytes())
      except validation.RecordRejected as e:
        ledger.reject(None, e.reason, path.name, source=path, detail=e.detail)
        continue
      study_id = report.study_id
      if r2gen is not None:
        split = r2gen.get(study_id)
        if split is None:
          ledger.exclude(None, NOT_IN_R2GEN, study_id)
          continue
      else:
        split = splits.assign_split(study_id, config.split_fractions, salt=self.name)
      if study_id in seen_studies:
        ledger.reject(
          split,
          validation.DUPLICATE_ID,
          study_id,
          source=path,
          detail=f"already defined by {seen_studies[study_id]}",
        )
        continue
      seen_studies[study_id] = path.name
      text = report_text.clean_text(f"{report.findings} {report.impression}")
      if not text:
        ledger.reject(
          split,
          validation.EMPTY_REPORT,
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
          validation.DUPLICATE_IMAGE,
          study_id,
          source=path,
          detail=f"image {shared[0]} already belongs to {seen_images[shared[0]]}",
        )
        continue
      for image_id in report.image_ids:
        seen_images[image_id] = study_id
      frontal, lateral, view_source = openi.choose_views(report.image_ids, labels)
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
        frontal_path = image_index.get(openi.canonical_image_key(study.frontal_id) or "")
        try:
          if frontal_path is None:
            raise validation.RecordRejected(
              validation.MISSING_IMAGE, f"no PNG for image id {study.frontal_id}"
            )
          frontal = self._load_image(frontal_path)
        except validation.RecordRejected as e:
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
          lateral_path = image_index.get(openi.canonical_image_key(study.lateral_id) or "")
          try:
            if lateral_path is None:
              raise validation.RecordRejected(validation.MISSING_IMAGE, study.lateral_id)
            lateral = self._load_image(lateral_path)
            lateral_array, lateral_id = lateral.array, study.lateral_id
            if lateral.converted:
              ledger.note(split, f"image converted from mode {lateral.original_mode}")
          except validation.RecordRejected as e:
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
