"""MS-CXR phrase grounding (jimte/evaluate/ms_cxr.py): the CSV reader on a file in MS-CXR's
format, the per-phrase scores on hand-made maps, and the evaluation and CLI end to end on the tiny
trained work dir (tests/conftest.py:trained_workdir) over generated PNG / JPEG images."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from jimte.evaluate import grounding, ms_cxr

COLUMNS = [
  "dicom_id",
  "category",
  "label_text",
  "path",
  "x",
  "y",
  "w",
  "h",
  "avg_iou",
  "image_width",
  "image_height",
  "split",
]


def _write_csv(path, rows, columns=COLUMNS):
  """An MS-CXR-style CSV: one box per row, pixels of the original image."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({"path": "", "avg_iou": 0.8, **row})
  return str(path)


def _row(dicom_id, category, text, x, y, w, h, width, height, split="test", path=""):
  return dict(
    dicom_id=dicom_id,
    category=category,
    label_text=text,
    x=x,
    y=y,
    w=w,
    h=h,
    image_width=width,
    image_height=height,
    split=split,
    path=path,
  )


# ------------------------------------------------------------------------------------- reader
def test_reader_normalises_groups_and_filters_by_split(tmp_path):
  rows = [
    _row("a", "Pleural effusion", "Bilateral pleural effusions", 10, 20, 30, 40, 200, 100),
    _row("a", "Pleural effusion", "Bilateral pleural effusions", 150, 50, 40, 50, 200, 100),
    _row("a", "Consolidation", "Left lower lobe consolidation", 120, 60, 100, 60, 200, 100),
    _row("b", "Pneumonia", "Right upper lobe pneumonia", 5, 5, 10, 10, 50, 80, split="val"),
    _row("c", "Edema", "Mild  pulmonary edema", 0, 0, 50, 80, 50, 80, split="train", path="x.jpg"),
  ]
  path = _write_csv(tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv", rows)
  phrases = ms_cxr.read_ms_cxr(path)
  assert [(p.dicom_id, p.category, p.text) for p in phrases] == [
    ("a", "Pleural effusion", "Bilateral pleural effusions"),
    ("a", "Consolidation", "Left lower lobe consolidation"),
    ("b", "Pneumonia", "Right upper lobe pneumonia"),
    ("c", "Edema", "Mild pulmonary edema"),
  ]
  # [y0, x0, y1, x1] = [y / H, x / W, (y + h) / H, (x + w) / W]; the second box of "a" reaches
  # y = 100 = H; the consolidation box passes the right edge (x + w = 220 > 200): clipped.
  assert phrases[0].boxes == ((20 / 100, 10 / 200, 60 / 100, 40 / 200), (0.5, 0.75, 1.0, 0.95))
  assert phrases[1].boxes == ((60 / 100, 120 / 200, 1.0, 1.0),)
  assert phrases[0].image_size == (100, 200) and phrases[2].image_size == (80, 50)
  assert phrases[3].path == "x.jpg" and phrases[0].path is None
  assert [p.split for p in phrases] == ["test", "test", "val", "train"]
  assert [p.dicom_id for p in ms_cxr.read_ms_cxr(path, split="test")] == ["a", "a"]
  assert [p.text for p in ms_cxr.read_ms_cxr(path, split="val")] == ["Right upper lobe pneumonia"]
  assert ms_cxr.read_ms_cxr(path, split="nonexistent") == []


def test_reader_errors_name_the_file_the_line_and_the_column(tmp_path):
  row = _row("a", "Edema", "edema", 1, 2, 3, 4, 10, 10)
  no_height = _write_csv(tmp_path / "no_height.csv", [row], [c for c in COLUMNS if c != "h"])
  with pytest.raises(ValueError, match=re.escape(f"{no_height}: no column 'h'")):
    ms_cxr.read_ms_cxr(no_height)
  no_split = _write_csv(tmp_path / "no_split.csv", [row], [c for c in COLUMNS if c != "split"])
  assert len(ms_cxr.read_ms_cxr(no_split)) == 1  # the split column is needed only to filter
  with pytest.raises(ValueError, match=re.escape(f"{no_split}: no column 'split'")):
    ms_cxr.read_ms_cxr(no_split, split="test")
  bad_number = _write_csv(tmp_path / "bad_number.csv", [row, {**row, "w": "wide"}])
  with pytest.raises(ValueError, match=re.escape(f"{bad_number}:3: column 'w' is not a number")):
    ms_cxr.read_ms_cxr(bad_number)
  empty_box = _write_csv(tmp_path / "empty_box.csv", [{**row, "h": 0}])
  with pytest.raises(ValueError, match=re.escape(f"{empty_box}:2: box w=3.0, h=0.0 is empty")):
    ms_cxr.read_ms_cxr(empty_box)
  sizes = _write_csv(tmp_path / "sizes.csv", [row, {**row, "image_width": 20}])
  with pytest.raises(ValueError, match=re.escape(f"{sizes}:3: size (10, 20) differs")):
    ms_cxr.read_ms_cxr(sizes)


# ----------------------------------------------------------------------------- scoring
def test_score_map_on_a_hand_made_map():
  """The 4 x 4 map of tests/test_grounding.py, its box the top-left quarter given normalised."""
  heat = np.array(
    [[4.0, 2.0, 0.0, 0.0], [2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
  )
  scores = ms_cxr.score_map(heat, [(0.0, 0.0, 0.5, 0.5)], (0.1, 0.3, 0.6))
  assert scores["pointing_game"] == 1.0 and scores["box_fraction"] == 0.25
  assert scores["cnr"] == pytest.approx((2 - 1 / 6) / np.sqrt(2 + 5 / 36))
  assert scores["miou"] == pytest.approx((0.5 + 0.75 + 0.25) / 3)
  # Two boxes: the union. The maximum (4, at the top-left) lies outside the right half's boxes.
  right = ms_cxr.score_map(heat, [(0.0, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0)], (0.5,))
  assert right["pointing_game"] == 0.0 and right["box_fraction"] == 0.5
  # t = 0.5: only pixels (0, 0) = 1 and (0, 1) = (1, 0) = 0.5 are chosen: none in the right half.
  assert right["miou"] == 0.0


def test_aggregate_means_per_category_and_overall():
  def scores(hit, cnr, miou, fraction):
    return {
      "similarity": {"pointing_game": hit, "cnr": cnr, "miou": miou, "box_fraction": fraction}
    }

  categories = ["Edema", "Edema", "Pneumonia"]
  results = ms_cxr.aggregate(
    categories, [scores(1.0, 2.0, 0.5, 0.2), scores(0.0, 1.0, 0.3, 0.4), scores(1.0, 0.5, 0.1, 0.6)]
  )
  assert results["num_phrases"] == 3 and results["num_phrases/Edema"] == 2
  assert results["similarity/pointing_game"] == pytest.approx(2 / 3)
  assert results["similarity/pointing_game/Edema"] == 0.5
  assert results["similarity/pointing_game/category_mean"] == pytest.approx(0.75)
  assert results["similarity/cnr/Edema"] == 1.5 and results["similarity/cnr"] == pytest.approx(
    3.5 / 3
  )
  assert results["similarity/miou/Pneumonia"] == pytest.approx(0.1)
  assert results["chance_pointing_game"] == pytest.approx(0.4)
  assert results["chance_pointing_game/Edema"] == pytest.approx(0.3)
  assert ms_cxr.aggregate([], []) == {"num_phrases": 0.0}


# --------------------------------------------------------------------------- end to end
def _png(path, height, width, seed, image_format="PNG"):
  rng = np.random.default_rng(seed)
  pixels = (rng.random((height, width)) * 255).astype(np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels, mode="L").save(path, format=image_format)


LONG_PHRASE = " ".join(["opacity"] * 300)  # longer than any tiny max_len: cut when tokenised


@pytest.fixture(scope="module")
def ms_cxr_set(tmp_path_factory):
  """A CSV in MS-CXR's format and its images: two images found (one a half-size PNG, one a JPEG
  found by the path column), one missing, one of another aspect ratio, one phrase too long."""
  root = tmp_path_factory.mktemp("ms_cxr")
  images = root / "images"
  _png(images / "a.png", 96, 128, seed=0)  # the CSV says 192 x 256: a uniformly resized copy
  _png(images / "files" / "p10" / "b.jpg", 120, 100, seed=1, image_format="JPEG")
  _png(images / "d.png", 64, 64, seed=2)  # the CSV says 100 x 200
  b_path = "files/p10/b.jpg"  # found by the path column only
  rows = [
    _row("a", "Consolidation", "Left lower lobe consolidation", 140, 100, 80, 60, 256, 192),
    _row("a", "Consolidation", "Left lower lobe consolidation", 150, 40, 60, 40, 256, 192),
    _row("a", "Pleural effusion", "Small right pleural effusion", 10, 120, 80, 60, 256, 192),
    _row(
      "b", "Pneumonia", "Right upper lobe pneumonia", 100, 200, 300, 400, 1000, 1200, path=b_path
    ),
    _row("c", "Cardiomegaly", "Cardiomegaly", 10, 10, 50, 50, 100, 100),  # no image file
    _row("d", "Edema", "Mild pulmonary edema", 10, 10, 20, 20, 200, 100),  # aspect differs
    _row("b", "Pneumonia", LONG_PHRASE, 100, 200, 300, 400, 1000, 1200, path=b_path),
    _row("e", "Edema", "Edema", 1, 1, 5, 5, 10, 10, split="train"),
  ]
  csv_path = _write_csv(root / "MS_CXR_Local_Alignment_v1.1.0.csv", rows)
  return csv_path, str(images)


@pytest.fixture(scope="module")
def model(trained_workdir):
  from jimte.inference import JimteModel

  return JimteModel.from_workdir(trained_workdir)


@pytest.fixture(scope="module")
def evaluated(model, ms_cxr_set):
  csv_path, images = ms_cxr_set
  phrases = ms_cxr.read_ms_cxr(csv_path, split="test")
  kinds = ("similarity", "attention")
  return phrases, ms_cxr.evaluate_ms_cxr(model, phrases, images, kinds=kinds)


def test_evaluation_counts_every_phrase_scored_or_skipped(evaluated):
  phrases, results = evaluated
  assert len(phrases) == 6 and results["num_phrases_given"] == 6
  assert results["num_phrases"] == 3
  assert results[f"skipped/{ms_cxr.NO_IMAGE_FILE}"] == 1
  assert results[f"skipped/{ms_cxr.ASPECT_MISMATCH}"] == 1
  assert results[f"skipped/{ms_cxr.PHRASE_NOT_TOKENISED}"] == 1
  assert results[f"skipped/{ms_cxr.UNREADABLE_IMAGE}"] == 0
  assert {k.split("/", 1)[1] for k in results if k.startswith("num_phrases/")} == {
    "Consolidation",
    "Pleural effusion",
    "Pneumonia",
  }
  for kind in ("similarity", "attention"):
    for suffix in ("", "/Consolidation", "/Pneumonia", "/category_mean"):
      assert 0.0 <= results[f"{kind}/pointing_game{suffix}"] <= 1.0
      assert 0.0 <= results[f"{kind}/miou{suffix}"] <= 1.0
      assert np.isfinite(results[f"{kind}/cnr{suffix}"]) and results[f"{kind}/cnr{suffix}"] >= 0
    assert results[f"{kind}/pointing_game"] * 3 in (0.0, 1.0, 2.0, 3.0)


def test_evaluation_scores_the_inference_apis_map_against_the_normalised_boxes(
  model, ms_cxr_set, evaluated
):
  """Each one-phrase category equals scoring `JimteModel.phrase_maps` of that image by hand; the
  box (x 100..400, y 200..600 of 1000 x 1200) lands on the JPEG's pixels (100 x 120)."""
  from jimte.image_files import read_xray

  phrases, results = evaluated
  pneumonia = next(p for p in phrases if p.category == "Pneumonia" and p.text != LONG_PHRASE)
  assert pneumonia.boxes == ((200 / 1200, 100 / 1000, 600 / 1200, 400 / 1000),)
  assert ms_cxr.find_image(pneumonia, ms_cxr_set[1]).endswith("files/p10/b.jpg")
  image = read_xray(ms_cxr.find_image(pneumonia, ms_cxr_set[1]))
  maps = model.phrase_maps(image, pneumonia.text, [(pneumonia.text, 0)])
  assert maps.similarity.shape == (1, 120, 100)
  inside = np.zeros((120, 100), bool)
  inside[20:60, 10:40] = True  # the pixels whose centres lie in the box
  heat = maps.similarity[0]
  assert results["similarity/pointing_game/Pneumonia"] == grounding.pointing_hit(heat, inside)
  assert results["similarity/cnr/Pneumonia"] == pytest.approx(
    grounding.contrast_to_noise(heat, inside)
  )
  assert results["similarity/miou/Pneumonia"] == pytest.approx(
    grounding.mean_iou(heat, inside, grounding.DEFAULT_THRESHOLDS)
  )
  assert results["chance_pointing_game/Pneumonia"] == pytest.approx(inside.mean())


def test_cli_prints_a_table_and_writes_the_metrics(
  trained_workdir, ms_cxr_set, evaluated, tmp_path, capsys
):
  csv_path, images = ms_cxr_set
  out = tmp_path / "metrics.json"
  argv = ["--workdir", trained_workdir, "--csv", csv_path, "--images", images, "--split", "test"]
  assert ms_cxr.main([*argv, "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "Pleural effusion" in printed and "all (mean over phrases)" in printed
  assert f"skipped ({ms_cxr.NO_IMAGE_FILE}): 1" in printed and "phrases given: 6" in printed
  written = json.loads(out.read_text())
  _, results = evaluated
  assert written["num_phrases"] == 3 and "similarity/miou/Pneumonia" in written
  for key, value in written.items():
    assert results[key] == pytest.approx(value, abs=1e-5), key

  no_label = _write_csv(
    tmp_path / "no_label.csv",
    [_row("a", "Edema", "edema", 1, 2, 3, 4, 10, 10)],
    [c for c in COLUMNS if c != "label_text"],
  )
  assert ms_cxr.main(["--workdir", trained_workdir, "--csv", no_label, "--images", images]) == 2
  assert f"{no_label}: no column 'label_text'" in capsys.readouterr().err
