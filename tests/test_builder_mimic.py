"""Tests of the `mimic_cxr` builder on a small MIMIC-CXR-JPG 2.x layout written by the test."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.builders.image_io import target_size
from data_pipeline.builders.mimic_cxr import Builder as MimicBuilder
from data_pipeline.builders.mimic_cxr import (
  MimicCxrConfig,
  extract_sections,
  findings_and_impression,
)
from data_pipeline.builders.mimic_cxr.studies import Study
from data_pipeline.builders.validation import MISSING_REPORT, NON_UTF8_REPORT
from data_pipeline.names import CHEXPERT_OBSERVATIONS
from tests._builder_helpers import gz_csv, prepare, read_split, record_accounting
from tests._mimic_tree import write_mimic_tree

_REPORT_FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 FINDINGS:
 PA and lateral views of the chest.  The lungs are clear.
 No pleural effusion.

 IMPRESSION:
 No acute cardiopulmonary process.
"""
_REPORT_IMPRESSION_ONLY = """ FINAL REPORT
 INDICATION: Line placement.
 IMPRESSION:  Right PICC terminates in the SVC.
"""
_REPORT_NO_SECTIONS = """ FINAL REPORT
 Portable chest radiograph shows low lung volumes without focal consolidation.
"""


def test_extract_sections():
  sections = extract_sections(_REPORT_FULL)
  assert sections["INDICATION"] == "___F with cough"
  assert (
    sections["FINDINGS"].startswith("PA and lateral views") and "effusion." in sections["FINDINGS"]
  )
  assert findings_and_impression(_REPORT_FULL) == (
    "PA and lateral views of the chest. The lungs are clear. No pleural effusion.",
    "No acute cardiopulmonary process.",
    True,
  )
  assert findings_and_impression(_REPORT_IMPRESSION_ONLY) == (
    "",
    "Right PICC terminates in the SVC.",
    True,
  )
  assert findings_and_impression(_REPORT_NO_SECTIONS)[2] is False


@pytest.fixture
def mimic_dir(tmp_path) -> Path:
  """Three patients, five studies, eight images in the MIMIC-CXR-JPG 2.x layout."""
  root = tmp_path / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.0.0"
  rng = np.random.default_rng(6)
  images = [  # dicom, subject, study, view, split
    ("d1", "10000032", "50000001", "PA", "train"),
    ("d2", "10000032", "50000001", "LATERAL", "train"),
    ("d3", "10000032", "50000002", "AP", "train"),
    ("d4", "11000011", "51000001", "PA", "validate"),
    ("d5", "11000011", "51000001", "AP", "validate"),
    ("d6", "12000099", "52000001", "PA", "test"),
    ("d7", "12000099", "52000002", "PA", "test"),
    ("d8", "12000099", "52000003", "PA", "test"),
  ]
  for dicom, subject, study, _, _ in images:
    folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (120, 100), dtype=np.uint8)).save(
      folder / f"{dicom}.jpg", "JPEG"
    )

  # Reports: two in mimic-cxr-reports/, one next to the images, 52000002 missing,
  # 52000003 not UTF-8.
  def report(base: Path, subject: str, study: str, data: bytes):
    path = base / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)

  reports = root / "mimic-cxr-reports" / "files"
  report(reports, "10000032", "50000001", _REPORT_FULL.encode())
  report(reports, "10000032", "50000002", _REPORT_NO_SECTIONS.encode())
  report(root / "files", "11000011", "51000001", _REPORT_IMPRESSION_ONLY.encode())
  report(reports, "12000099", "52000003", b" FINDINGS: Opacit\xe9.\n")
  report(reports, "12000099", "52000001", _REPORT_FULL.encode())
  gz_csv(
    root / "mimic-cxr-2.0.0-split.csv.gz",
    ["dicom_id", "study_id", "subject_id", "split"],
    [[d, st, su, sp] for d, su, st, _, sp in images],
  )
  gz_csv(
    root / "mimic-cxr-2.0.0-metadata.csv.gz",
    ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"],
    [[d, su, st, v, 120, 100] for d, su, st, v, _ in images],
  )
  header = ["subject_id", "study_id", *sorted(CHEXPERT_OBSERVATIONS)]
  row_a = {"No Finding": "1.0"}
  row_b = {"Pleural Effusion": "-1.0", "Edema": "0.0", "Support Devices": "1.0"}
  gz_csv(
    root / "mimic-cxr-2.0.0-chexpert.csv.gz",
    header,
    [
      ["10000032", "50000001", *[row_a.get(n, "") for n in sorted(CHEXPERT_OBSERVATIONS)]],
      ["11000011", "51000001", *[row_b.get(n, "") for n in sorted(CHEXPERT_OBSERVATIONS)]],
    ],
  )
  return tmp_path


def test_mimic_builds_official_split_and_labels(mimic_dir, tmp_path):
  config = MimicCxrConfig(name="frontal_64", max_side=64)
  builder = prepare(MimicBuilder(data_dir=tmp_path / "out", config=config), mimic_dir)
  counts = {name: s.num_examples for name, s in builder.info.splits.items()}
  assert counts == {"train": 2, "validation": 2, "test": 1}
  accounting = record_accounting(builder)
  assert accounting["train"]["excluded"] == {"not frontal view": 1}
  assert accounting["test"]["skipped"] == {MISSING_REPORT: 1, NON_UTF8_REPORT: 1}
  assert accounting["train"]["notes"] == {
    "no FINDINGS/IMPRESSION (whole report used)": 1,
    "no CheXpert labels": 1,
  }
  assert accounting["test"]["notes"] == {"no CheXpert labels": 1}

  train = {ex["dicom_id"].decode(): ex for ex in read_split(builder, "train")}
  d1 = train["d1"]
  assert d1["study_id"] == b"s50000001" and d1["patient_id"] == b"p10000032"
  assert d1["text"].decode() == (
    "PA and lateral views of the chest. The lungs are clear. "
    "No pleural effusion. No acute cardiopulmonary process."
  )
  assert d1["image"].shape == (64, 53, 1) and d1["view_position"] == b"PA"
  expected = np.full(14, np.nan, np.float32)
  expected[CHEXPERT_OBSERVATIONS.index("No Finding")] = 1.0
  np.testing.assert_array_equal(d1["labels"], expected)
  d3 = train["d3"]
  assert d3["text"].decode().startswith("FINAL REPORT Portable chest radiograph")
  assert np.all(np.isnan(d3["labels"]))  # study without a CheXpert row
  validation = read_split(builder, "validation")
  assert {ex["dicom_id"] for ex in validation} == {b"d4", b"d5"}
  labels = validation[0]["labels"]
  index = CHEXPERT_OBSERVATIONS.index
  assert labels[index("Pleural Effusion")] == -1.0 and labels[index("Edema")] == 0.0
  assert labels[index("Support Devices")] == 1.0 and np.isnan(labels[index("Cardiomegaly")])
  assert validation[0]["text"] == b"Right PICC terminates in the SVC."
  test = read_split(builder, "test")
  assert [ex["dicom_id"] for ex in test] == [b"d6"]


def test_mimic_reports_read_from_zip(mimic_dir, tmp_path):
  root = mimic_dir / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.0.0"
  reports = root / "mimic-cxr-reports"
  with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as archive:
    for path in sorted(reports.rglob("*.txt")):
      archive.write(path, path.relative_to(reports).as_posix())
  shutil.rmtree(reports)
  config = MimicCxrConfig(name="zip_64", max_side=64)
  builder = prepare(MimicBuilder(data_dir=tmp_path / "out", config=config), mimic_dir)
  counts = {name: s.num_examples for name, s in builder.info.splits.items()}
  assert counts == {"train": 2, "validation": 2, "test": 1}
  train = {ex["dicom_id"]: ex for ex in read_split(builder, "train")}
  assert train[b"d1"]["impression"] == b"No acute cardiopulmonary process."


def test_mimic_generated_tree_single_process(tmp_path):
  """The single-process build of a generated MIMIC-CXR-JPG tree: counts and every example."""
  tree = write_mimic_tree(tmp_path / "manual", subjects=40, seed=3)
  config = MimicCxrConfig(name="tree_64", max_side=64)
  builder = prepare(MimicBuilder(data_dir=tmp_path / "out", config=config), tmp_path / "manual")
  assert {name: s.num_examples for name, s in builder.info.splits.items()} == tree.counts()
  assert record_accounting(builder) == tree.accounting
  for split, kept in tree.kept.items():
    examples = read_split(builder, split)
    assert {ex["dicom_id"].decode() for ex in examples} == kept
    for ex in examples:
      study = ex["study_id"].decode()[1:]
      assert ex["text"].decode() == tree.texts[study]
      np.testing.assert_array_equal(ex["labels"], tree.labels[study])
      width, height = target_size(tree.sizes[ex["dicom_id"].decode()], 64)
      assert ex["image"].shape == (height, width, 1) and ex["image"].dtype == np.uint8


def test_study_plan_json_round_trip():
  """The Beam build's plan lines give back the planned study (NaN labels included)."""
  labels = (1.0, float("nan"), -1.0, 0.0) + (float("nan"),) * 10
  study = Study("validation", "10000032", "50414267", labels, (("d1", "PA"), ("d2", "AP")))
  back = Study.from_json(study.to_json())
  assert (back.split, back.subject_id, back.study_id, back.images) == (
    study.split,
    study.subject_id,
    study.study_id,
    study.images,
  )
  np.testing.assert_array_equal(np.array(back.labels), np.array(labels))
  assert Study.from_json(dataclasses.replace(study, labels=None).to_json()).labels is None


def test_mimic_build_with_chest_imagenome_region_boxes(mimic_dir, tmp_path):
  """`imagenome: true`: each example's `region_boxes` are its scene graph's pixel boxes over the
  stored JPEG's size (120 x 100 here; the stored image is resized, the normalised boxes are not);
  absent regions NaN; an image without a scene graph or with a broken one all NaN; every such case
  and every ignored or clipped object counted in the notes."""
  import json

  from data_pipeline import imagenome
  from data_pipeline.builders.mimic_cxr import studies
  from data_pipeline.names import REGION_INDEX

  graphs = tmp_path / "physionet.org/files/chest-imagenome/1.0.0/silver_dataset/scene_graph"
  graphs.mkdir(parents=True)

  def box(name, x1, y1, x2, y2):
    return dict(bbox_name=name, original_x1=x1, original_y1=y1, original_x2=x2, original_y2=y2)

  objects = [
    box("right lung", 10, 12, 50, 100),
    box("Left_Lung", 55, 10, 130, 110),  # past the right edge (width 100): clipped
    box("left arm", 0, 0, 5, 5),  # not one of the 29: ignored
  ]
  (graphs / "d1_SceneGraph.json").write_text(json.dumps({"image_id": "d1", "objects": objects}))
  (graphs / "d4_SceneGraph.json").write_text("{not json")
  config = MimicCxrConfig(name="frontal_64_imagenome", max_side=64, imagenome=True)
  builder = prepare(MimicBuilder(data_dir=tmp_path / "out", config=config), mimic_dir)
  train = {ex["dicom_id"].decode(): ex for ex in read_split(builder, "train")}
  boxes = train["d1"]["region_boxes"]
  assert boxes.shape == (29, 4) and boxes.dtype == np.float32
  np.testing.assert_allclose(boxes[REGION_INDEX["right lung"]], [12 / 120, 0.1, 100 / 120, 0.5])
  np.testing.assert_allclose(boxes[REGION_INDEX["left lung"]], [10 / 120, 0.55, 110 / 120, 1.0])
  others = [
    i for i in range(29) if i not in (REGION_INDEX["right lung"], REGION_INDEX["left lung"])
  ]
  assert np.isnan(boxes[others]).all()
  assert np.isnan(train["d3"]["region_boxes"]).all()
  validation = {ex["dicom_id"].decode(): ex for ex in read_split(builder, "validation")}
  assert np.isnan(validation["d4"]["region_boxes"]).all()
  accounting = record_accounting(builder)
  assert accounting["train"]["notes"][studies.NO_SCENE_GRAPH] == 1  # d3
  assert accounting["train"]["notes"][f"scene graph: {imagenome.UNKNOWN_REGION}"] == 1
  assert accounting["train"]["notes"][f"scene graph: {imagenome.CLIPPED_BOX}"] == 1
  assert accounting["validation"]["notes"][studies.UNREADABLE_SCENE_GRAPH] == 1  # d4
  assert accounting["validation"]["notes"][studies.NO_SCENE_GRAPH] == 1  # d5
  assert accounting["test"]["notes"][studies.NO_SCENE_GRAPH] == 1  # d6


def test_mimic_imagenome_build_without_scene_graphs_names_what_to_download(mimic_dir, tmp_path):
  config = MimicCxrConfig(name="frontal_64_imagenome", max_side=64, imagenome=True)
  with pytest.raises(FileNotFoundError, match="scene_graph.zip"):
    prepare(MimicBuilder(data_dir=tmp_path / "out", config=config), mimic_dir)
