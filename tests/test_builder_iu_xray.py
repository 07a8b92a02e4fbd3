"""Tests of the `iu_xray` builder and its Open-i parsing (`iu_xray.openi`).

Real-data tests read /work/shared/data/iu_xray and skip cleanly when it is absent. Nothing is
downloaded: IU X-ray images are replaced by placeholder PNGs written under the real Open-i image
ids.
"""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline.builders.iu_xray import Builder as IuBuilder
from data_pipeline.builders.iu_xray import (
  IuXrayConfig,
  canonical_image_key,
  choose_views,
  parse_report,
)
from data_pipeline.builders.report_text import clean_text
from data_pipeline.builders.splits import assign_split
from data_pipeline.builders.validation import (
  CORRUPT_IMAGE,
  DUPLICATE_ID,
  EMPTY_REPORT,
  MALFORMED_REPORT,
  MISSING_IMAGE,
  RecordRejected,
  StrictValidationError,
)
from tests._builder_helpers import (
  IU_DIR,
  gz_csv,
  prepare,
  read_split,
  record_accounting,
  run_tfds_cli,
  total_counts,
  write_png,
)


def test_iu_helpers():
  assert canonical_image_key("CXR1_1_IM-0001-3001") == "1/IM-0001-3001"
  assert canonical_image_key("1_IM-0001-3001.dcm.png") == "1/IM-0001-3001"
  assert canonical_image_key("CXR2084_IM-0715-1001-0002.png") == "2084/IM-0715-1001-0002"
  assert canonical_image_key("CXR2384_IM-0942/0.png") is None
  labels = {
    "5/IM-1-2001": ("frontal", "projections_csv"),
    "5/IM-1-1001": ("lateral", "projections_csv"),
  }
  assert choose_views(["CXR5_IM-1-1001", "CXR5_IM-1-2001"], labels) == (
    "CXR5_IM-1-2001",
    "CXR5_IM-1-1001",
    "projections_csv",
  )
  assert choose_views(["CXR6_IM-1-1001", "CXR6_IM-1-2001"], {}) == (
    "CXR6_IM-1-1001",
    "CXR6_IM-1-2001",
    "report_order",
  )
  only_lateral = {"7/IM-1-1001": ("lateral", "dicom_view_position")}
  assert choose_views(["CXR7_IM-1-1001"], only_lateral)[0] is None
  xml = (
    b'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR9"/><MedlineCitation>'
    b'<Article><Abstract><AbstractText Label="FINDINGS">Clear\n lungs.</AbstractText>'
    b'<AbstractText Label="IMPRESSION">Normal.</AbstractText></Abstract></Article>'
    b"</MedlineCitation><MeSH><major>normal</major><automatic>x</automatic></MeSH>"
    b'<parentImage id="CXR9_IM-1-1001"/><parentImage id="CXR9_IM-1-2001"/></eCitation>'
  )
  report = parse_report(xml)
  assert (report.study_id, report.findings, report.impression) == (
    "CXR9",
    "Clear lungs.",
    "Normal.",
  )
  assert report.mesh_major == ("normal",) and report.image_ids[1] == "CXR9_IM-1-2001"
  with pytest.raises(RecordRejected, match="malformed"):
    parse_report(b"<eCitation><uId id='CXR1'/>")
  with pytest.raises(RecordRejected, match="non-UTF-8"):
    parse_report(b"<eCitation><uId id='CXR1'/>\xff</eCitation>")


def _openi_reports() -> list[dict]:
  return list(csv.DictReader(open(IU_DIR / "reports_openi.csv", newline="", encoding="utf-8")))


def _iu_manual_dir(tmp_path: Path, studies: list[dict], with_projections: bool) -> Path:
  """Real reports archive + placeholder PNGs (value 20 + 60 * position) for `studies`."""
  manual = tmp_path / "manual"
  (manual / "png").mkdir(parents=True)
  (manual / "NLMCXR_reports.tgz").symlink_to(IU_DIR / "NLMCXR_reports.tgz")
  if with_projections:
    (manual / "projections.csv").symlink_to(IU_DIR / "projections.csv")
    (manual / "r2gen_annotation.json").symlink_to(IU_DIR / "r2gen_annotation.json")
  for row in studies:
    for position, image_id in enumerate(row["image_ids"].split(";")):
      write_png(manual / "png" / f"{image_id}.png", np.full((96, 80), 20 + 60 * position, np.uint8))
  return manual


def _has_text(row: dict) -> bool:
  return bool(row["findings"].strip() or row["impression"].strip())


@pytest.mark.skipif(not IU_DIR.is_dir(), reason="shared iu_xray data absent")
def test_iu_default_config_with_placeholder_images(tmp_path):
  reports = _openi_reports()
  usable = [r for r in reports if r["image_ids"] and _has_text(r)]
  chosen = usable[:: len(usable) // 60][:60]
  manual = _iu_manual_dir(tmp_path, chosen, with_projections=False)
  config = IuXrayConfig(name="default_64", max_side=64)
  builder = prepare(IuBuilder(data_dir=tmp_path / "out", config=config), manual)
  accounting = record_accounting(builder)
  skipped = total_counts(accounting, "skipped")
  assert total_counts(accounting, "kept")["kept"] == 60
  assert skipped[MISSING_IMAGE] == len(usable) - 60
  assert skipped[EMPTY_REPORT] == sum(not _has_text(r) for r in reports)
  assert dict(total_counts(accounting, "excluded")) == {
    "no image listed": sum(_has_text(r) and not r["image_ids"] for r in reports)
  }
  assert sum(skipped.values()) + 60 + sum(total_counts(accounting, "excluded").values()) == 3955

  by_id = {f"CXR{r['iuxr_id']}": r for r in chosen}
  seen = []
  for split in ("train", "validation", "test"):
    for ex in read_split(builder, split):
      study = ex["study_id"].decode()
      row = by_id[study]
      seen.append(study)
      assert ex["patient_id"].decode() == study
      assert assign_split(study, salt="iu_xray") == split
      ids = row["image_ids"].split(";")
      # No projection table: the first image in report order is the frontal one.
      assert ex["image_id"].decode() == ids[0] and ex["view_source"] == b"report_order"
      assert ex["image"].shape == (64, 53, 1) and np.all(ex["image"] == 20)
      assert bool(ex["has_lateral"]) == (len(ids) > 1)
      if len(ids) > 1:
        assert np.all(ex["image_lateral"] == 80)
      else:
        assert ex["image_lateral"].shape == (1, 1, 1)
      expected_text = clean_text(f"{row['findings']} {row['impression']}")
      assert ex["text"].decode() == expected_text
      majors = [m for m in row["mesh_major"].split(";") if m]
      assert [m.decode() for m in ex["mesh_major"]] == majors
  assert sorted(seen) == sorted(by_id)


@pytest.mark.skipif(not IU_DIR.is_dir(), reason="shared iu_xray data absent")
def test_iu_r2gen_config_with_projection_table(tmp_path):
  annotation = json.loads((IU_DIR / "r2gen_annotation.json").read_text())
  r2gen_split = {
    e["id"].split("_")[0]: {"val": "validation"}.get(k, k)
    for k, entries in annotation.items()
    for e in entries
  }
  projections = {}
  with open(IU_DIR / "projections.csv", newline="") as f:
    for row in csv.DictReader(f):
      projections[canonical_image_key(row["filename"])] = row["projection"]
  reports = {f"CXR{r['iuxr_id']}": r for r in _openi_reports()}
  in_r2gen = [reports[s] for s in sorted(r2gen_split)]

  def frontal_of(row):
    ids = row["image_ids"].split(";")
    fr = [i for i in ids if projections.get(canonical_image_key(i)) == "Frontal"]
    return fr[0] if fr else None

  no_frontal = [
    r
    for r in in_r2gen
    if all(projections.get(canonical_image_key(i)) == "Lateral" for i in r["image_ids"].split(";"))
  ]
  with_frontal = [r for r in in_r2gen if frontal_of(r)]
  chosen = with_frontal[:: len(with_frontal) // 60][:60]
  manual = _iu_manual_dir(tmp_path, chosen, with_projections=True)
  config = IuXrayConfig(name="r2gen_64", split_scheme="r2gen", max_side=64)
  builder = prepare(IuBuilder(data_dir=tmp_path / "out", config=config), manual)
  accounting = record_accounting(builder)
  excluded = total_counts(accounting, "excluded")
  assert excluded["not in R2Gen split"] == 3955 - 2955
  assert excluded["no frontal image"] == len(no_frontal)
  skipped = total_counts(accounting, "skipped")
  assert dict(skipped) == {MISSING_IMAGE: 2955 - len(no_frontal) - 60}
  counts = {name: s.num_examples for name, s in builder.info.splits.items()}
  assert sum(counts.values()) == 60
  expected_counts = collections.Counter(r2gen_split[f"CXR{r['iuxr_id']}"] for r in chosen)
  assert counts == {s: expected_counts[s] for s in ("train", "validation", "test")}
  by_id = {f"CXR{r['iuxr_id']}": r for r in chosen}
  for split in counts:
    for ex in read_split(builder, split):
      row = by_id[ex["study_id"].decode()]
      assert r2gen_split[ex["study_id"].decode()] == split
      frontal = frontal_of(row)
      assert ex["image_id"].decode() == frontal
      assert ex["view_source"] == b"projections_csv"
      position = row["image_ids"].split(";").index(frontal)
      assert np.all(ex["image"] == 20 + 60 * position)
      assert ex["findings"].decode() == clean_text(row["findings"])


@pytest.mark.skipif(not IU_DIR.is_dir(), reason="shared iu_xray data absent")
def test_iu_r2gen_without_annotation_fails_clearly(tmp_path):
  manual = _iu_manual_dir(tmp_path, [], with_projections=False)
  config = IuXrayConfig(name="r2gen_missing", split_scheme="r2gen", max_side=64)
  with pytest.raises(FileNotFoundError, match="r2gen_annotation.json"):
    prepare(IuBuilder(data_dir=tmp_path / "out", config=config), manual)


def _iu_xml(uid: str, images: list[str], findings: str = "Clear lungs.") -> bytes:
  parents = "".join(f'<parentImage id="{i}"><caption>x</caption></parentImage>' for i in images)
  return (
    f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="{uid}"/>'
    f'<MedlineCitation><Article><Abstract><AbstractText Label="FINDINGS">{findings}'
    f"</AbstractText></Abstract></Article></MedlineCitation>{parents}</eCitation>"
  ).encode()


def test_iu_bad_inputs_from_folders(tmp_path):
  manual = tmp_path / "manual"
  xml = manual / "NLMCXR_reports" / "ecgen-radiology"
  xml.mkdir(parents=True)
  (xml / "1.xml").write_bytes(_iu_xml("CXR1", ["CXR1_IM-0001-1001", "CXR1_IM-0001-2001"]))
  (xml / "2.xml").write_bytes(b"<eCitation><uId id='CXR2'/>")  # cut short
  (xml / "3.xml").write_bytes(_iu_xml("CXR1", ["CXR1_IM-0009-1001"]))  # duplicate uId
  (xml / "4.xml").write_bytes(_iu_xml("CXR4", []))
  (xml / "5.xml").write_bytes(_iu_xml("CXR5", ["CXR5_IM-0005-1001"]))
  (xml / "6.xml").write_bytes(_iu_xml("CXR6", ["CXR6_IM-0006-1001"]))
  (xml / "7.xml").write_bytes(_iu_xml("CXR7", ["CXR7_IM-0007-1001"], findings=" "))
  # Kaggle-style names in an arbitrary folder; CXR1's lateral image is absent.
  images = manual / "images_normalized"
  write_png(images / "1_IM-0001-1001.dcm.png", np.full((90, 90), 77, np.uint8))
  write_png(images / "5_IM-0005-1001.dcm.png", np.full((90, 90), 5, np.uint8))
  (images / "6_IM-0006-1001.dcm.png").write_bytes(b"\x89PNG broken")
  gz_csv(
    manual / "nlmcxr_dicom_metadata.csv.gz",
    ["imageid", "View Position"],
    [["CXR5_IM-0005-1001", "LL"], ["CXR1_IM-0001-1001", "PA"]],
  )
  config = IuXrayConfig(name="bad_iu", max_side=64, split_fractions=[["train", 1.0]])
  builder = prepare(IuBuilder(data_dir=tmp_path / "out", config=config), manual)
  accounting = record_accounting(builder)
  assert dict(total_counts(accounting, "skipped")) == {
    MALFORMED_REPORT: 1,
    DUPLICATE_ID: 1,
    CORRUPT_IMAGE: 1,
    EMPTY_REPORT: 1,
  }
  assert dict(total_counts(accounting, "excluded")) == {"no image listed": 1, "no frontal image": 1}
  assert accounting["train"]["notes"] == {"lateral dropped: missing image": 1}
  (example,) = read_split(builder, "train")
  assert example["study_id"] == b"CXR1" and np.all(example["image"] == 77)
  assert not example["has_lateral"] and example["image_lateral_id"] == b""
  assert example["view_source"] == b"report_order"
  with pytest.raises(StrictValidationError, match=r"2\.xml.*malformed report"):
    prepare(IuBuilder(data_dir=tmp_path / "strict", config=config, strict=True), manual)


@pytest.mark.slow
@pytest.mark.skipif(not IU_DIR.is_dir(), reason="shared iu_xray data absent")
def test_iu_real_reports_build_through_tfds_cli(tmp_path):
  """`tfds build` of iu_xray from the real Open-i report archive (+ placeholder images for 20
  studies): the reports without images are counted, the kept studies readable."""
  reports = _openi_reports()
  usable = [r for r in reports if r["image_ids"] and _has_text(r)]
  chosen = usable[:: len(usable) // 20][:20]
  manual = _iu_manual_dir(tmp_path, chosen, with_projections=False)
  result = run_tfds_cli(
    [
      "build",
      "data_pipeline/builders/iu_xray",
      "--manual_dir",
      str(manual),
      "--data_dir",
      str(tmp_path / "out"),
      "--config",
      json.dumps({"name": "default_64", "max_side": 64}),
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout + result.stderr
  builder = tfds.builder_from_directory(str(tmp_path / "out" / "iu_xray" / "default_64" / "1.0.0"))
  assert sum(split.num_examples for split in builder.info.splits.values()) == 20
  accounting = builder.info.metadata["record_accounting"]
  assert total_counts(accounting, "skipped")[MISSING_IMAGE] == len(usable) - 20
  assert "missing image" in out  # the counts are printed
