"""Tests of the `covid_cxr` builder (and, through it, the shared empty-split and strict-mode
handling of the CLI).

Real-data tests read /work/shared/data/covid_chestxray and skip cleanly when it is absent.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline.builders.covid_cxr import Builder as CovidBuilder
from data_pipeline.builders.covid_cxr import CovidCxrConfig
from data_pipeline.builders.covid_cxr.covid_cxr_dataset_builder import view_kind
from data_pipeline.builders.validation import (
  CORRUPT_IMAGE,
  DUPLICATE_ID,
  DUPLICATE_IMAGE,
  EMPTY_REPORT,
  MISSING_IMAGE,
  NON_UTF8_REPORT,
  SMALL_IMAGE,
  STRICT_ENV_VAR,
  TRUNCATED_IMAGE,
  StrictValidationError,
)
from tests._builder_helpers import (
  COVID_DIR,
  png_bytes,
  prepare,
  read_split,
  record_accounting,
  run_tfds_cli,
  total_counts,
  write_png,
)

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
  write_png(images / "good.png", gray)
  write_png(images / "rgb.png", rng.integers(0, 256, (90, 100, 3), dtype=np.uint8))
  write_png(images / "deep.png", (rng.integers(0, 4096, (100, 90))).astype(np.uint16))
  write_png(images / "small.png", gray[:20, :20])
  write_png(images / "lateral.png", gray)
  write_png(images / "unknown.png", gray)
  write_png(images / "ct.png", gray)
  write_png(images / "nonote.png", gray)
  write_png(images / "latin1.png", gray)
  (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
  (images / "trunc.png").write_bytes(png_bytes(gray)[:300])
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
  CORRUPT_IMAGE: 1,
  TRUNCATED_IMAGE: 1,
  MISSING_IMAGE: 1,
  SMALL_IMAGE: 1,
  EMPTY_REPORT: 1,
  NON_UTF8_REPORT: 1,
  DUPLICATE_IMAGE: 1,
  DUPLICATE_ID: 1,
}


def test_covid_bad_inputs_are_skipped_and_counted(bad_covid_dir, tmp_path, capsys):
  # One split: with 14 rows, a hashed 3-way split could leave a split with only bad records.
  config = CovidCxrConfig(name="bad_t", max_side=64, min_side=32, split_fractions=[["train", 1.0]])
  builder = prepare(
    CovidBuilder(data_dir=tmp_path / "out", config=config, strict=False), bad_covid_dir
  )
  accounting = record_accounting(builder)
  assert dict(total_counts(accounting, "skipped")) == EXPECTED_BAD_SKIPS
  assert dict(total_counts(accounting, "excluded")) == {
    "lateral view": 1,
    "unknown view": 1,
    "not X-ray": 1,
  }
  notes = total_counts(accounting, "notes")
  assert notes["image converted from mode RGB"] == 1
  assert sum(n for k, n in notes.items() if k.startswith("image converted from mode I")) == 1
  assert list(builder.info.splits) == ["train"]
  examples = read_split(builder, "train")
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
  everything = total_counts(accounting, "kept")["kept"] + sum(
    total_counts(accounting, "skipped").values()
  )
  assert everything + sum(total_counts(accounting, "excluded").values()) == 14


def test_covid_strict_mode_raises_naming_the_file(tmp_path):
  rng = np.random.default_rng(4)
  root = tmp_path / "covid_strict"
  write_png(root / "images" / "fine.png", rng.integers(0, 256, (80, 80), dtype=np.uint8))
  (root / "images" / "broken.png").write_bytes(b"definitely not a png")
  _write_covid_dir(
    root, [_covid_row("1", "fine.png", "note"), _covid_row("2", "broken.png", "note")]
  )
  config = CovidCxrConfig(name="strict_t", max_side=64)
  with pytest.raises(StrictValidationError, match=r"broken\.png.*corrupt image"):
    prepare(CovidBuilder(data_dir=tmp_path / "a", config=config, strict=True), root)
  # Without the broken row, strict mode builds normally.
  _write_covid_dir(root, [_covid_row("1", "fine.png", "note")])
  builder = prepare(CovidBuilder(data_dir=tmp_path / "b", config=config, strict=True), root)
  assert sum(s.num_examples for s in builder.info.splits.values()) == 1
  assert builder.info.metadata["strict"] is True


def test_split_with_only_bad_records_fails_with_counts(tmp_path):
  root = tmp_path / "covid_all_bad"
  (root / "images").mkdir(parents=True)
  (root / "images" / "bad.png").write_bytes(b"nope")
  _write_covid_dir(root, [_covid_row("1", "bad.png", "note")])
  config = CovidCxrConfig(name="all_bad", max_side=64, split_fractions=[["train", 1.0]])
  with pytest.raises(ValueError, match=r"every planned record was skipped.*corrupt image"):
    prepare(CovidBuilder(data_dir=tmp_path / "out", config=config), root)


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
  patients = {s: {ex["patient_id"] for ex in read_split(builder, s)} for s in builder.info.splits}
  names = list(patients)
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      assert not patients[a] & patients[b], (a, b)
  return patients


@pytest.mark.skipif(not COVID_DIR.is_dir(), reason="shared covid_chestxray data absent")
def test_covid_real_all_views_python_api(tmp_path):
  config = CovidCxrConfig(name="all_64", frontal_only=False, max_side=64)
  builder = prepare(CovidBuilder(data_dir=tmp_path, config=config), COVID_DIR)
  expected, _ = _expected_covid(frontal_only=False)
  total = sum(split.num_examples for split in builder.info.splits.values())
  assert total == expected == 537
  accounting = record_accounting(builder)
  assert dict(total_counts(accounting, "skipped")) == {"empty report": 111, "duplicate image": 5}
  assert not total_counts(accounting, "excluded")
  assert total + 111 + 5 == 653  # every metadata row accounted for
  patients = _check_patient_disjoint(builder)
  # Patients listed under two ids for the same radiographs are kept in one split.
  for pair in ((b"285", b"339"), (b"287", b"340")):
    assert len({s for s, ids in patients.items() if set(pair) & ids}) == 1
  for ex in read_split(builder, "validation"):
    assert ex["text"].strip() and max(ex["image"].shape[:2]) == 64


@pytest.mark.slow
@pytest.mark.skipif(not COVID_DIR.is_dir(), reason="shared covid_chestxray data absent")
def test_covid_real_build_through_tfds_cli(tmp_path):
  result = run_tfds_cli(
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
  assert dict(total_counts(accounting, "skipped")) == {"empty report": 111, "duplicate image": 4}
  assert dict(total_counts(accounting, "excluded")) == {"lateral view": 55, "unknown view": 39}
  patients = _check_patient_disjoint(builder)
  assert all(patients.values())
  for ex in read_split(builder, "test"):
    assert ex["text"].strip()
    assert ex["image"].dtype == np.uint8 and ex["image"].shape[2] == 1
    assert max(ex["image"].shape[:2]) == 64


@pytest.mark.slow
def test_strict_mode_from_cli_env_var(tmp_path):
  root = tmp_path / "covid_trunc"
  gray = np.random.default_rng(5).integers(0, 256, (80, 80), dtype=np.uint8)
  write_png(root / "images" / "ok.png", gray)
  (root / "images" / "cut.png").write_bytes(png_bytes(gray)[:200])
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
  result = run_tfds_cli(args, {STRICT_ENV_VAR: "1"})
  assert result.returncode != 0
  assert "StrictValidationError" in result.stderr and "cut.png" in result.stderr
  assert "truncated image" in result.stderr
