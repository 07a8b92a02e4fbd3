"""Tests of the TFDS builders in data_pipeline/builders and their shared validation module.

Real-data tests read /work/shared/data (via `parents[2] / "shared" / "data"`) and skip cleanly
when it is absent. Nothing is downloaded: IU X-ray images are replaced by placeholder PNGs written
under the real Open-i image ids.
"""

from __future__ import annotations

import collections
import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipeline import builders
from data_pipeline.builders import common
from data_pipeline.builders.covid_cxr import Builder as CovidBuilder
from data_pipeline.builders.covid_cxr import CovidCxrConfig
from data_pipeline.builders.covid_cxr.covid_cxr_dataset_builder import view_kind
from data_pipeline.builders.iu_xray import Builder as IuBuilder
from data_pipeline.builders.iu_xray import (
  IuXrayConfig,
  canonical_image_key,
  choose_views,
  parse_report,
)
from data_pipeline.builders.mimic_cxr import Builder as MimicBuilder
from data_pipeline.builders.mimic_cxr import (
  MimicCxrConfig,
  extract_sections,
  findings_and_impression,
)
from data_pipeline.builders.synthetic_cxr import Builder as SyntheticBuilder
from data_pipeline.builders.synthetic_cxr import SyntheticCxrConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COVID_DIR = SHARED / "covid_chestxray"
IU_DIR = SHARED / "iu_xray"
TFDS_CLI = [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main"]

tfds.disable_progress_bar()


# ------------------------------------------------------------------------------------ helpers
def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
  buffer = io.BytesIO()
  image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
  image.save(buffer, "PNG")
  return buffer.getvalue()


def _write_png(path: Path, array: np.ndarray) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(_png_bytes(array))
  return path


def _prepare(builder, manual_dir: Path | str | None):
  config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
  builder.download_and_prepare(download_config=config)
  return builder


def _examples(builder, split: str) -> list[dict]:
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _accounting(builder) -> dict:
  return builder.info.metadata["record_accounting"]


def _total(accounting: dict, kind: str) -> collections.Counter:
  total: collections.Counter = collections.Counter()
  for counts in accounting.values():
    if kind == "kept":
      total["kept"] += counts["kept"]
    else:
      total.update(counts[kind])
  return total


def _run_cli(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
  return subprocess.run(
    TFDS_CLI + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )


# ------------------------------------------------------------------------------------ common
def test_builder_package_index():
  assert builders.builder_dir("covid_cxr") == REPO / "data_pipeline" / "builders" / "covid_cxr"
  for name in builders.BUILDER_NAMES:
    assert (builders.builder_dir(name) / f"{name}_dataset_builder.py").is_file()
  assert builders.builder_class("covid_cxr") is CovidBuilder
  with pytest.raises(ValueError):
    builders.builder_dir("nope")


def test_assign_split_is_deterministic_and_follows_fractions():
  keys = [f"patient-{i}" for i in range(20000)]
  first = [common.assign_split(k) for k in keys]
  assert first == [common.assign_split(k) for k in keys]
  shares = collections.Counter(first)
  assert abs(shares["train"] / len(keys) - 0.7) < 0.015
  assert abs(shares["validation"] / len(keys) - 0.1) < 0.015
  assert abs(shares["test"] / len(keys) - 0.2) < 0.015
  # A different salt reshuffles; custom fractions are honoured.
  assert first != [common.assign_split(k, salt="other") for k in keys]
  halves = collections.Counter(common.assign_split(k, (("a", 1), ("b", 1))) for k in keys)
  assert abs(halves["a"] / len(keys) - 0.5) < 0.015
  with pytest.raises(ValueError):
    common.assign_split("x", (("a", -1.0),))


@pytest.mark.parametrize(
  "size,max_side,side,expected",
  [
    ((3000, 2000), 1000, "longer", (1000, 667)),
    ((2000, 3000), 1000, "longer", (667, 1000)),
    ((3000, 2000), 1000, "shorter", (1500, 1000)),
    ((500, 400), 1000, "longer", (500, 400)),  # never enlarged
    ((500, 400), None, "longer", (500, 400)),
    ((4096, 4096), 2048, "longer", (2048, 2048)),
  ],
)
def test_target_size(size, max_side, side, expected):
  assert common.target_size(size, max_side, side) == expected


def test_load_grayscale_modes_are_converted_deterministically():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
  loaded = common.load_grayscale_image(_png_bytes(rgb))
  luma = (
    rgb[..., 0].astype(np.int64) * 299
    + rgb[..., 1].astype(np.int64) * 587
    + rgb[..., 2].astype(np.int64) * 114
  ) / 1000
  assert loaded.array.shape == (70, 90, 1) and loaded.array.dtype == np.uint8
  assert loaded.original_mode == "RGB" and loaded.converted
  assert np.abs(loaded.array[..., 0].astype(np.float64) - luma).max() <= 1.0

  # RGBA: composited over black, so a half-transparent white pixel becomes ~128.
  rgba = np.zeros((70, 70, 4), np.uint8)
  rgba[..., :3] = 255
  rgba[:, :35, 3] = 255
  rgba[:, 35:, 3] = 128
  gray = common.load_grayscale_image(_png_bytes(rgba)).array[..., 0]
  assert gray[:, :35].min() == 255 and abs(int(gray[0, 50]) - 128) <= 1

  # 16-bit: windowed to its own 0.5-99.5 percentiles; a 12-bit ramp fills 0..255.
  ramp = np.tile(np.linspace(0, 4095, 100).astype(np.uint16), (80, 1))
  deep = common.load_grayscale_image(_png_bytes(ramp))
  assert deep.original_mode.startswith("I")
  assert deep.array.min() == 0 and deep.array.max() == 255
  assert np.all(np.diff(deep.array[0, :, 0].astype(int)) >= 0)  # order preserved
  constant = common.load_grayscale_image(_png_bytes(np.full((70, 70), 900, np.uint16)))
  assert constant.array.max() == 0

  # Grayscale input is passed through unchanged.
  l_img = rng.integers(0, 256, (70, 80), dtype=np.uint8)
  same = common.load_grayscale_image(_png_bytes(l_img))
  assert not same.converted and np.array_equal(same.array[..., 0], l_img)


def test_load_grayscale_resizes_and_rejects(tmp_path):
  big = np.random.default_rng(1).integers(0, 256, (300, 200), dtype=np.uint8)
  resized = common.load_grayscale_image(_png_bytes(big), max_side=64)
  assert resized.array.shape == (64, 43, 1) and resized.original_size == (200, 300)
  shorter = common.load_grayscale_image(_png_bytes(big), max_side=64, resize_side="shorter")
  assert shorter.array.shape == (96, 64, 1)
  # JPEG goes through the DCT draft path and still lands on the exact target size.
  buffer = io.BytesIO()
  Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (600, 3))).save(buffer, "JPEG")
  jpeg = common.load_grayscale_image(buffer.getvalue(), max_side=100)
  assert jpeg.array.shape == (78, 100, 1)

  def reason(source, **kw):
    with pytest.raises(common.RecordRejected) as info:
      common.load_grayscale_image(source, **kw)
    return info.value.reason

  good = _png_bytes(big)
  assert reason(tmp_path / "absent.png") == common.MISSING_IMAGE
  assert reason(b"not an image at all") == common.CORRUPT_IMAGE
  assert reason(b"") == common.CORRUPT_IMAGE
  assert reason(good[: len(good) // 2]) == common.TRUNCATED_IMAGE
  assert reason(good, min_side=201) == common.SMALL_IMAGE
  assert common.load_grayscale_image(good, min_side=200).array.shape == (300, 200, 1)


def test_text_validation():
  assert common.require_text("  a\n\n b\t c ") == "a b c"
  with pytest.raises(common.RecordRejected, match="empty report"):
    common.require_text(" \n ")
  with pytest.raises(common.RecordRejected, match="empty report"):
    common.require_text(None)
  assert common.decode_report("\ufeffnormal".encode("utf-8")) == "normal"
  with pytest.raises(common.RecordRejected) as info:
    common.decode_report(b"ok \xff\xfe bad")
  assert info.value.reason == common.NON_UTF8_REPORT
  escaped = b"ok \xff".decode("utf-8", "surrogateescape")
  with pytest.raises(common.RecordRejected, match="non-UTF-8"):
    common.require_text(escaped)


def test_strict_resolution(monkeypatch):
  monkeypatch.delenv(common.STRICT_ENV_VAR, raising=False)
  assert common.resolve_strict(None) is False
  monkeypatch.setenv(common.STRICT_ENV_VAR, "1")
  assert common.resolve_strict(None) is True
  assert common.resolve_strict(False) is False  # explicit wins
  monkeypatch.setenv(common.STRICT_ENV_VAR, "maybe")
  with pytest.raises(ValueError):
    common.resolve_strict(None)


def test_ledger_counts_and_strict_message(capsys):
  ledger = common.SkipLedger("demo")
  ledger.accept("train")
  ledger.reject("train", common.EMPTY_REPORT, "k1")
  ledger.reject("train", common.EMPTY_REPORT, "k2")
  ledger.exclude("train", "lateral view", "k3")
  ledger.note("train", "image converted from mode RGB")
  line = ledger.report("train")
  assert "kept 1" in line and "empty report: 2" in line and "lateral view: 1" in line
  assert line in capsys.readouterr().out
  assert ledger.counts("train")["skipped"] == {"empty report": 2}
  assert ledger.counts("never")["kept"] == 0 and "never" not in ledger.as_dict()

  strict = common.SkipLedger("demo", strict=True)
  strict.exclude("train", "lateral view", "k")  # policy exclusions never raise
  with pytest.raises(common.StrictValidationError, match=r"'k9'.*/data/x\.png.*corrupt"):
    strict.reject("train", common.CORRUPT_IMAGE, "k9", source="/data/x.png")


# ------------------------------------------------------------------------------- covid_cxr
_COVID_HEADER = [
  "patientid",
  "offset",
  "finding",
  "view",
  "modality",
  "folder",
  "filename",
  "clinical_notes",
]


def _covid_row(patient, filename, note, view="PA", modality="X-ray", offset="0"):
  return [patient, offset, "COVID-19", view, modality, "images", filename, note]


def _write_covid_dir(root: Path, rows: list[list[str]], raw_rows: list[bytes] = ()) -> Path:
  lines = io.StringIO()
  writer = csv.writer(lines, lineterminator="\n")
  writer.writerow(_COVID_HEADER)
  for row in rows:
    writer.writerow(row)
  data = lines.getvalue().encode("utf-8") + b"".join(raw_rows)
  root.mkdir(parents=True, exist_ok=True)
  (root / "metadata.csv").write_bytes(data)
  return root


@pytest.fixture
def bad_covid_dir(tmp_path) -> Path:
  """A covid-layout folder with one instance of every failure mode."""
  root = tmp_path / "covid_bad"
  images = root / "images"
  rng = np.random.default_rng(3)
  gray = rng.integers(0, 256, (90, 110), dtype=np.uint8)
  _write_png(images / "good.png", gray)
  _write_png(images / "rgb.png", rng.integers(0, 256, (90, 100, 3), dtype=np.uint8))
  _write_png(images / "deep.png", (rng.integers(0, 4096, (100, 90))).astype(np.uint16))
  _write_png(images / "small.png", gray[:20, :20])
  _write_png(images / "lateral.png", gray)
  _write_png(images / "unknown.png", gray)
  _write_png(images / "ct.png", gray)
  _write_png(images / "nonote.png", gray)
  _write_png(images / "latin1.png", gray)
  (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
  (images / "trunc.png").write_bytes(_png_bytes(gray)[:300])
  (images / "good.jpg").write_bytes(b"same key as good.png")
  rows = [
    _covid_row("1", "good.png", "Bilateral opacities."),
    _covid_row("2", "rgb.png", "RGB figure from a paper.", view="AP Supine"),
    _covid_row("3", "deep.png", "16 bit radiograph."),
    _covid_row("4", "small.png", "Thumbnail."),
    _covid_row("5", "corrupt.png", "Corrupt file."),
    _covid_row("6", "trunc.png", "Truncated file."),
    _covid_row("7", "missing.png", "File was never saved."),
    _covid_row("8", "nonote.png", "   "),
    _covid_row("9", "good.png", "Same image again under another patient id."),
    _covid_row("10", "good.jpg", "Different file, same key."),
    _covid_row("11", "lateral.png", "Lateral.", view="L"),
    _covid_row("12", "unknown.png", "Unknown view.", view="?"),
    _covid_row("13", "ct.png", "CT slice.", modality="CT"),
  ]
  non_utf8 = b'14,0,COVID-19,PA,X-ray,images,latin1.png,"Fi\xe8vre et toux"\n'
  return _write_covid_dir(root, rows, [non_utf8])


EXPECTED_BAD_SKIPS = {
  common.CORRUPT_IMAGE: 1,
  common.TRUNCATED_IMAGE: 1,
  common.MISSING_IMAGE: 1,
  common.SMALL_IMAGE: 1,
  common.EMPTY_REPORT: 1,
  common.NON_UTF8_REPORT: 1,
  common.DUPLICATE_IMAGE: 1,
  common.DUPLICATE_ID: 1,
}


def test_covid_bad_inputs_are_skipped_and_counted(bad_covid_dir, tmp_path, capsys):
  # One split: with 14 rows, a hashed 3-way split could leave a split with only bad records.
  config = CovidCxrConfig(name="bad_t", max_side=64, min_side=32, split_fractions=[["train", 1.0]])
  builder = _prepare(
    CovidBuilder(data_dir=tmp_path / "out", config=config, strict=False), bad_covid_dir
  )
  accounting = _accounting(builder)
  assert dict(_total(accounting, "skipped")) == EXPECTED_BAD_SKIPS
  assert dict(_total(accounting, "excluded")) == {
    "lateral view": 1,
    "unknown view": 1,
    "not X-ray": 1,
  }
  notes = _total(accounting, "notes")
  assert notes["image converted from mode RGB"] == 1
  assert sum(n for k, n in notes.items() if k.startswith("image converted from mode I")) == 1
  assert list(builder.info.splits) == ["train"]
  examples = _examples(builder, "train")
  assert sorted(ex["patient_id"].decode() for ex in examples) == ["1", "2", "3"]
  assert accounting["train"]["kept"] == 3
  for ex in examples:
    assert ex["image"].dtype == np.uint8 and ex["image"].shape[-1] == 1
    assert max(ex["image"].shape[:2]) == 64 and ex["text"]
  by_patient = {ex["patient_id"]: ex for ex in examples}
  assert by_patient[b"2"]["view"] == b"AP Supine" and by_patient[b"1"]["text"] == (
    b"Bilateral opacities."
  )
  assert "[covid_cxr] split 'train': kept 3, skipped 8 (" in capsys.readouterr().out
  # 14 rows in, each accounted for exactly once.
  everything = _total(accounting, "kept")["kept"] + sum(_total(accounting, "skipped").values())
  assert everything + sum(_total(accounting, "excluded").values()) == 14


def test_covid_strict_mode_raises_naming_the_file(tmp_path):
  rng = np.random.default_rng(4)
  root = tmp_path / "covid_strict"
  _write_png(root / "images" / "fine.png", rng.integers(0, 256, (80, 80), dtype=np.uint8))
  (root / "images" / "broken.png").write_bytes(b"definitely not a png")
  _write_covid_dir(
    root, [_covid_row("1", "fine.png", "note"), _covid_row("2", "broken.png", "note")]
  )
  config = CovidCxrConfig(name="strict_t", max_side=64)
  with pytest.raises(common.StrictValidationError, match=r"broken\.png.*corrupt image"):
    _prepare(CovidBuilder(data_dir=tmp_path / "a", config=config, strict=True), root)
  # Without the broken row, strict mode builds normally.
  _write_covid_dir(root, [_covid_row("1", "fine.png", "note")])
  builder = _prepare(CovidBuilder(data_dir=tmp_path / "b", config=config, strict=True), root)
  assert sum(s.num_examples for s in builder.info.splits.values()) == 1
  assert builder.info.metadata["strict"] is True


def test_split_with_only_bad_records_fails_with_counts(tmp_path):
  root = tmp_path / "covid_all_bad"
  (root / "images").mkdir(parents=True)
  (root / "images" / "bad.png").write_bytes(b"nope")
  _write_covid_dir(root, [_covid_row("1", "bad.png", "note")])
  config = CovidCxrConfig(name="all_bad", max_side=64, split_fractions=[["train", 1.0]])
  with pytest.raises(ValueError, match=r"every planned record was skipped.*corrupt image"):
    _prepare(CovidBuilder(data_dir=tmp_path / "out", config=config), root)


def test_covid_view_kind():
  assert view_kind("PA") == view_kind("AP Supine") == view_kind("ap erect") == "frontal"
  assert view_kind("L") == view_kind("Lateral") == "lateral"
  assert view_kind("") == view_kind("?") == view_kind("Axial") == "unknown"


def _expected_covid(frontal_only: bool) -> tuple[int, set]:
  """Independent count of usable rows in the real metadata.csv (first usable row per image)."""
  with open(COVID_DIR / "metadata.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  seen, kept = set(), 0
  for row in rows:
    if row["modality"] != "X-ray":
      continue
    if frontal_only and row["view"].split(" ")[0] not in ("PA", "AP"):
      continue
    if not row["clinical_notes"].strip() or row["image_file"] in seen:
      continue
    seen.add(row["image_file"])
    kept += 1
  return kept, {row["patientid"] for row in rows}


def _check_patient_disjoint(builder) -> dict[str, set]:
  patients = {s: {ex["patient_id"] for ex in _examples(builder, s)} for s in builder.info.splits}
  names = list(patients)
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      assert not patients[a] & patients[b], (a, b)
  return patients


@pytest.mark.skipif(not COVID_DIR.is_dir(), reason="shared covid_chestxray data absent")
def test_covid_real_all_views_python_api(tmp_path):
  config = CovidCxrConfig(name="all_64", frontal_only=False, max_side=64)
  builder = _prepare(CovidBuilder(data_dir=tmp_path, config=config), COVID_DIR)
  expected, _ = _expected_covid(frontal_only=False)
  total = sum(split.num_examples for split in builder.info.splits.values())
  assert total == expected == 537
  accounting = _accounting(builder)
  assert dict(_total(accounting, "skipped")) == {"empty report": 111, "duplicate image": 5}
  assert not _total(accounting, "excluded")
  assert total + 111 + 5 == 653  # every metadata row accounted for
  patients = _check_patient_disjoint(builder)
  # Patients listed under two ids for the same radiographs are kept in one split.
  for pair in ((b"285", b"339"), (b"287", b"340")):
    assert len({s for s, ids in patients.items() if set(pair) & ids}) == 1
  for ex in _examples(builder, "validation"):
    assert ex["text"].strip() and max(ex["image"].shape[:2]) == 64


@pytest.mark.slow
@pytest.mark.skipif(not COVID_DIR.is_dir(), reason="shared covid_chestxray data absent")
def test_covid_real_build_through_tfds_cli(tmp_path):
  result = _run_cli(
    [
      "build",
      "data_pipeline/builders/covid_cxr",
      "--manual_dir",
      str(COVID_DIR),
      "--data_dir",
      str(tmp_path),
      "--config",
      json.dumps({"name": "frontal_64", "max_side": 64}),
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout + result.stderr
  data_dir = tmp_path / "covid_cxr" / "frontal_64" / "1.0.0"
  builder = tfds.builder_from_directory(str(data_dir))
  expected, _ = _expected_covid(frontal_only=True)
  counts = {name: split.num_examples for name, split in builder.info.splits.items()}
  assert sum(counts.values()) == expected == 444
  accounting = json.loads((data_dir / "metadata.json").read_text())["record_accounting"]
  for name, n in counts.items():
    assert accounting[name]["kept"] == n
    assert f"[covid_cxr] split '{name}': kept {n}," in out
  assert dict(_total(accounting, "skipped")) == {"empty report": 111, "duplicate image": 4}
  assert dict(_total(accounting, "excluded")) == {"lateral view": 55, "unknown view": 39}
  patients = _check_patient_disjoint(builder)
  assert all(patients.values())
  for ex in _examples(builder, "test"):
    assert ex["text"].strip()
    assert ex["image"].dtype == np.uint8 and ex["image"].shape[2] == 1
    assert max(ex["image"].shape[:2]) == 64


@pytest.mark.slow
def test_strict_mode_from_cli_env_var(tmp_path):
  root = tmp_path / "covid_trunc"
  gray = np.random.default_rng(5).integers(0, 256, (80, 80), dtype=np.uint8)
  _write_png(root / "images" / "ok.png", gray)
  (root / "images" / "cut.png").write_bytes(_png_bytes(gray)[:200])
  _write_covid_dir(root, [_covid_row("1", "ok.png", "n"), _covid_row("2", "cut.png", "n")])
  args = [
    "build",
    "data_pipeline/builders/covid_cxr",
    "--manual_dir",
    str(root),
    "--data_dir",
    str(tmp_path / "out"),
    "--config",
    json.dumps({"name": "strict_cli", "max_side": 64}),
  ]
  result = _run_cli(args, {common.STRICT_ENV_VAR: "1"})
  assert result.returncode != 0
  assert "StrictValidationError" in result.stderr and "cut.png" in result.stderr
  assert "truncated image" in result.stderr


# --------------------------------------------------------------------------------- iu_xray
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
  with pytest.raises(common.RecordRejected, match="malformed"):
    parse_report(b"<eCitation><uId id='CXR1'/>")
  with pytest.raises(common.RecordRejected, match="non-UTF-8"):
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
      _write_png(
        manual / "png" / f"{image_id}.png", np.full((96, 80), 20 + 60 * position, np.uint8)
      )
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
  builder = _prepare(IuBuilder(data_dir=tmp_path / "out", config=config), manual)
  accounting = _accounting(builder)
  skipped = _total(accounting, "skipped")
  assert _total(accounting, "kept")["kept"] == 60
  assert skipped[common.MISSING_IMAGE] == len(usable) - 60
  assert skipped[common.EMPTY_REPORT] == sum(not _has_text(r) for r in reports)
  assert dict(_total(accounting, "excluded")) == {
    "no image listed": sum(_has_text(r) and not r["image_ids"] for r in reports)
  }
  assert sum(skipped.values()) + 60 + sum(_total(accounting, "excluded").values()) == 3955

  by_id = {f"CXR{r['iuxr_id']}": r for r in chosen}
  seen = []
  for split in ("train", "validation", "test"):
    for ex in _examples(builder, split):
      study = ex["study_id"].decode()
      row = by_id[study]
      seen.append(study)
      assert ex["patient_id"].decode() == study
      assert common.assign_split(study, salt="iu_xray") == split
      ids = row["image_ids"].split(";")
      # No projection table: the first image in report order is the frontal one.
      assert ex["image_id"].decode() == ids[0] and ex["view_source"] == b"report_order"
      assert ex["image"].shape == (64, 53, 1) and np.all(ex["image"] == 20)
      assert bool(ex["has_lateral"]) == (len(ids) > 1)
      if len(ids) > 1:
        assert np.all(ex["image_lateral"] == 80)
      else:
        assert ex["image_lateral"].shape == (1, 1, 1)
      expected_text = common.clean_text(f"{row['findings']} {row['impression']}")
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
  builder = _prepare(IuBuilder(data_dir=tmp_path / "out", config=config), manual)
  accounting = _accounting(builder)
  excluded = _total(accounting, "excluded")
  assert excluded["not in R2Gen split"] == 3955 - 2955
  assert excluded["no frontal image"] == len(no_frontal)
  skipped = _total(accounting, "skipped")
  assert dict(skipped) == {common.MISSING_IMAGE: 2955 - len(no_frontal) - 60}
  counts = {name: s.num_examples for name, s in builder.info.splits.items()}
  assert sum(counts.values()) == 60
  expected_counts = collections.Counter(r2gen_split[f"CXR{r['iuxr_id']}"] for r in chosen)
  assert counts == {s: expected_counts[s] for s in ("train", "validation", "test")}
  by_id = {f"CXR{r['iuxr_id']}": r for r in chosen}
  for split in counts:
    for ex in _examples(builder, split):
      row = by_id[ex["study_id"].decode()]
      assert r2gen_split[ex["study_id"].decode()] == split
      frontal = frontal_of(row)
      assert ex["image_id"].decode() == frontal
      assert ex["view_source"] == b"projections_csv"
      position = row["image_ids"].split(";").index(frontal)
      assert np.all(ex["image"] == 20 + 60 * position)
      assert ex["findings"].decode() == common.clean_text(row["findings"])


@pytest.mark.skipif(not IU_DIR.is_dir(), reason="shared iu_xray data absent")
def test_iu_r2gen_without_annotation_fails_clearly(tmp_path):
  manual = _iu_manual_dir(tmp_path, [], with_projections=False)
  config = IuXrayConfig(name="r2gen_missing", split_scheme="r2gen", max_side=64)
  with pytest.raises(FileNotFoundError, match="r2gen_annotation.json"):
    _prepare(IuBuilder(data_dir=tmp_path / "out", config=config), manual)


# ------------------------------------------------------------------------------- mimic_cxr
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


def _gz_csv(path: Path, header: list[str], rows: list[list]) -> None:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  path.write_bytes(gzip.compress(buffer.getvalue().encode()))


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
  _gz_csv(
    root / "mimic-cxr-2.0.0-split.csv.gz",
    ["dicom_id", "study_id", "subject_id", "split"],
    [[d, st, su, sp] for d, su, st, _, sp in images],
  )
  _gz_csv(
    root / "mimic-cxr-2.0.0-metadata.csv.gz",
    ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"],
    [[d, su, st, v, 120, 100] for d, su, st, v, _ in images],
  )
  header = ["subject_id", "study_id", *sorted(common.CHEXPERT_OBSERVATIONS)]
  row_a = {"No Finding": "1.0"}
  row_b = {"Pleural Effusion": "-1.0", "Edema": "0.0", "Support Devices": "1.0"}
  _gz_csv(
    root / "mimic-cxr-2.0.0-chexpert.csv.gz",
    header,
    [
      ["10000032", "50000001", *[row_a.get(n, "") for n in sorted(common.CHEXPERT_OBSERVATIONS)]],
      ["11000011", "51000001", *[row_b.get(n, "") for n in sorted(common.CHEXPERT_OBSERVATIONS)]],
    ],
  )
  return tmp_path


def test_mimic_builds_official_split_and_labels(mimic_dir, tmp_path):
  config = MimicCxrConfig(name="frontal_64", max_side=64)
  builder = _prepare(MimicBuilder(data_dir=tmp_path / "out", config=config), mimic_dir)
  counts = {name: s.num_examples for name, s in builder.info.splits.items()}
  assert counts == {"train": 2, "validation": 2, "test": 1}
  accounting = _accounting(builder)
  assert accounting["train"]["excluded"] == {"not frontal view": 1}
  assert accounting["test"]["skipped"] == {common.MISSING_REPORT: 1, common.NON_UTF8_REPORT: 1}
  assert accounting["train"]["notes"] == {
    "no FINDINGS/IMPRESSION (whole report used)": 1,
    "no CheXpert labels": 1,
  }
  assert accounting["test"]["notes"] == {"no CheXpert labels": 1}

  train = {ex["dicom_id"].decode(): ex for ex in _examples(builder, "train")}
  d1 = train["d1"]
  assert d1["study_id"] == b"s50000001" and d1["patient_id"] == b"p10000032"
  assert d1["text"].decode() == (
    "PA and lateral views of the chest. The lungs are clear. "
    "No pleural effusion. No acute cardiopulmonary process."
  )
  assert d1["image"].shape == (64, 53, 1) and d1["view_position"] == b"PA"
  expected = np.full(14, np.nan, np.float32)
  expected[common.CHEXPERT_OBSERVATIONS.index("No Finding")] = 1.0
  np.testing.assert_array_equal(d1["labels"], expected)
  d3 = train["d3"]
  assert d3["text"].decode().startswith("FINAL REPORT Portable chest radiograph")
  assert np.all(np.isnan(d3["labels"]))  # study without a CheXpert row
  validation = _examples(builder, "validation")
  assert {ex["dicom_id"] for ex in validation} == {b"d4", b"d5"}
  labels = validation[0]["labels"]
  index = common.CHEXPERT_OBSERVATIONS.index
  assert labels[index("Pleural Effusion")] == -1.0 and labels[index("Edema")] == 0.0
  assert labels[index("Support Devices")] == 1.0 and np.isnan(labels[index("Cardiomegaly")])
  assert validation[0]["text"] == b"Right PICC terminates in the SVC."
  test = _examples(builder, "test")
  assert [ex["dicom_id"] for ex in test] == [b"d6"]


def test_mimic_reports_read_from_zip(mimic_dir, tmp_path):
  root = mimic_dir / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.0.0"
  reports = root / "mimic-cxr-reports"
  with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as archive:
    for path in sorted(reports.rglob("*.txt")):
      archive.write(path, path.relative_to(reports).as_posix())
  shutil.rmtree(reports)
  config = MimicCxrConfig(name="zip_64", max_side=64)
  builder = _prepare(MimicBuilder(data_dir=tmp_path / "out", config=config), mimic_dir)
  counts = {name: s.num_examples for name, s in builder.info.splits.items()}
  assert counts == {"train": 2, "validation": 2, "test": 1}
  train = {ex["dicom_id"]: ex for ex in _examples(builder, "train")}
  assert train[b"d1"]["impression"] == b"No acute cardiopulmonary process."


# ------------------------------------------------------------------------ iu_xray, bad input
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
  _write_png(images / "1_IM-0001-1001.dcm.png", np.full((90, 90), 77, np.uint8))
  _write_png(images / "5_IM-0005-1001.dcm.png", np.full((90, 90), 5, np.uint8))
  (images / "6_IM-0006-1001.dcm.png").write_bytes(b"\x89PNG broken")
  _gz_csv(
    manual / "nlmcxr_dicom_metadata.csv.gz",
    ["imageid", "View Position"],
    [["CXR5_IM-0005-1001", "LL"], ["CXR1_IM-0001-1001", "PA"]],
  )
  config = IuXrayConfig(name="bad_iu", max_side=64, split_fractions=[["train", 1.0]])
  builder = _prepare(IuBuilder(data_dir=tmp_path / "out", config=config), manual)
  accounting = _accounting(builder)
  assert dict(_total(accounting, "skipped")) == {
    common.MALFORMED_REPORT: 1,
    common.DUPLICATE_ID: 1,
    common.CORRUPT_IMAGE: 1,
    common.EMPTY_REPORT: 1,
  }
  assert dict(_total(accounting, "excluded")) == {"no image listed": 1, "no frontal image": 1}
  assert accounting["train"]["notes"] == {"lateral dropped: missing image": 1}
  (example,) = _examples(builder, "train")
  assert example["study_id"] == b"CXR1" and np.all(example["image"] == 77)
  assert not example["has_lateral"] and example["image_lateral_id"] == b""
  assert example["view_source"] == b"report_order"
  with pytest.raises(common.StrictValidationError, match=r"2\.xml.*malformed report"):
    _prepare(IuBuilder(data_dir=tmp_path / "strict", config=config, strict=True), manual)


# ---------------------------------------------------------------------------- synthetic_cxr
def test_synthetic_builder_matches_the_generator(tmp_path):
  from data_pipeline import phantoms

  config = SyntheticCxrConfig(
    name="syn_t", n_train=6, n_validation=3, n_test=0, image_size=64, seed=2
  )
  builder = _prepare(SyntheticBuilder(data_dir=tmp_path, config=config), None)
  assert {n: s.num_examples for n, s in builder.info.splits.items()} == {
    "train": 6,
    "validation": 3,
  }
  assert builder.info.metadata["empty_splits"] == ["test"]
  assert builder.info.metadata["chexpert_labels"] == list(common.CHEXPERT_OBSERVATIONS)
  patients = {}
  for split in ("train", "validation"):
    examples = sorted(_examples(builder, split), key=lambda e: int(e["index"]))
    assert [int(e["index"]) for e in examples] == list(range(config.split_sizes()[split]))
    patients[split] = {e["patient_id"] for e in examples}
    for ex in examples[:3]:
      reference = phantoms.generate_example(
        int(ex["index"]), split=split, seed=2, config=config.phantom_config()
      )
      assert ex["text"].decode() == reference["text"]  # verbatim: spans index it
      assert ex["impression_text"].decode() == reference["impression_text"]
      for key, value in phantoms.example_to_features(reference).items():
        value = np.asarray(value)
        if value.dtype.kind == "S":
          assert ex[key] == value, key
        else:
          np.testing.assert_array_equal(ex[key], value, err_msg=key)
  assert not patients["train"] & patients["validation"]
  assert builder.info.features["image"].shape == (64, 64, 1)


def test_synthetic_config_validation():
  with pytest.raises(ValueError, match="image_size"):
    SyntheticCxrConfig(name="x", phantom={"image_size": 64})
  with pytest.raises(TypeError):
    SyntheticCxrConfig(name="x", phantom={"no_such_knob": 1})
  with pytest.raises(ValueError):
    SyntheticCxrConfig(name="x", n_train=-1)
  weights = SyntheticCxrConfig(name="x", phantom={"finding_weights": [["nodule", 1.0]]})
  assert weights.phantom_config().finding_weights == (("nodule", 1.0),)


@pytest.mark.slow
@pytest.mark.skipif(not IU_DIR.is_dir(), reason="shared iu_xray data absent")
def test_iu_real_reports_build_through_tfds_cli(tmp_path):
  """`tfds build` of iu_xray from the real Open-i report archive (+ placeholder images for 20
  studies): the reports without images are counted, the kept studies readable."""
  reports = _openi_reports()
  usable = [r for r in reports if r["image_ids"] and _has_text(r)]
  chosen = usable[:: len(usable) // 20][:20]
  manual = _iu_manual_dir(tmp_path, chosen, with_projections=False)
  result = _run_cli(
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
  assert _total(accounting, "skipped")[common.MISSING_IMAGE] == len(usable) - 20
  assert "missing image" in out  # the counts are printed
