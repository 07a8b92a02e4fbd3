"""Chest ImaGenome scene-graph reader (data_pipeline/imagenome.py): exact normalised boxes of
scene-graph files written in the silver set's format, NaN for absent regions, and every file or
object left out counted by reason."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest

from data_pipeline import imagenome
from data_pipeline.names import REGION_INDEX

DICOM_A = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
DICOM_B = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"


def _object(dicom_id, name, x1, y1, x2, y2):
  """One scene-graph object as the silver set writes it: original pixels, their box size in
  original_width/height, and the 224 x 224 coordinates (here a plain scale of 224 / 2000)."""
  s = 224 / 2000
  return {
    "object_id": f"{dicom_id}_{name}",
    "x1": round(x1 * s),
    "y1": round(y1 * s),
    "x2": round(x2 * s),
    "y2": round(y2 * s),
    "width": round((x2 - x1) * s),
    "height": round((y2 - y1) * s),
    "bbox_name": name,
    "synsets": ["C0225706"],
    "name": name.capitalize(),
    "original_x1": x1,
    "original_y1": y1,
    "original_x2": x2,
    "original_y2": y2,
    "original_width": x2 - x1,
    "original_height": y2 - y1,
  }


def _write(directory, dicom_id, objects, name=None):
  graph = {
    "image_id": dicom_id,
    "viewpoint": "PA",
    "patient_id": 10000032,
    "study_id": 50414267,
    "objects": objects,
    "attributes": [],
    "relationships": [],
  }
  path = directory / (name or f"{dicom_id}{imagenome.SCENE_GRAPH_SUFFIX}")
  path.write_text(json.dumps(graph, indent=2))
  return path


SIZES = {DICOM_A: (2000, 1600), DICOM_B: (1000, 800)}  # (height, width)


def test_read_scene_graph_normalises_original_pixels_in_standard_order(tmp_path):
  path = _write(
    tmp_path,
    DICOM_A,
    [
      _object(DICOM_A, "right lung", 400, 300, 800, 1500),
      _object(DICOM_A, "Right  Upper_Lung Zone", 420, 320, 780, 700),  # normalised spelling
      _object(DICOM_A, "superior vena cava", 700, 200, 800, 600),  # alias of "svc"
      _object(DICOM_A, "cavo-atrial junction", 760, 640, 840, 720),
      _object(DICOM_A, "left arm", 1400, 100, 1600, 900),  # not one of our 29
    ],
  )
  notes, unknown = collections.Counter(), collections.Counter()
  dicom_id, boxes = imagenome.read_scene_graph(path, SIZES, notes=notes, unknown_regions=unknown)
  assert dicom_id == DICOM_A
  assert boxes.dtype == np.float32 and boxes.shape == (29, 4)
  # [y0, x0, y1, x1] = [y1 / 2000, x1 / 1600, y2 / 2000, x2 / 1600]
  expected = {
    "right lung": [300 / 2000, 400 / 1600, 1500 / 2000, 800 / 1600],
    "right upper lung zone": [320 / 2000, 420 / 1600, 700 / 2000, 780 / 1600],
    "svc": [200 / 2000, 700 / 1600, 600 / 2000, 800 / 1600],
    "cavoatrial junction": [640 / 2000, 760 / 1600, 720 / 2000, 840 / 1600],
  }
  for name, box in expected.items():
    np.testing.assert_array_equal(boxes[REGION_INDEX[name]], np.float32(box))
  absent = [i for name, i in REGION_INDEX.items() if name not in expected]
  assert len(absent) == 25 and np.isnan(boxes[absent]).all()
  assert notes == {imagenome.UNKNOWN_REGION: 1} and unknown == {"left arm": 1}


def test_boxes_past_the_edge_empty_duplicate_and_broken_objects_are_counted(tmp_path):
  broken = _object(DICOM_B, "trachea", 380, 50, 420, 300)
  broken["original_x2"] = "n/a"
  path = _write(
    tmp_path,
    DICOM_B,
    [
      _object(DICOM_B, "spine", -20, 10, 420, 1100),  # past the left and bottom edges
      _object(DICOM_B, "carina", 400, 300, 400, 320),  # x2 == x1
      _object(DICOM_B, "left lung", 450, 100, 700, 700),
      _object(DICOM_B, "left lung", 460, 110, 690, 690),  # given twice: ambiguous
      broken,
      {"object_id": "no name", "original_x1": 1},
    ],
  )
  notes = collections.Counter()
  _, boxes = imagenome.read_scene_graph(path, SIZES, notes=notes)
  np.testing.assert_array_equal(
    boxes[REGION_INDEX["spine"]], np.float32([10 / 1000, 0.0, 1.0, 420 / 800])
  )
  for name in ("carina", "left lung", "trachea"):
    assert np.isnan(boxes[REGION_INDEX[name]]).all(), name
  assert notes == {
    imagenome.CLIPPED_BOX: 1,
    imagenome.EMPTY_BOX: 1,
    imagenome.DUPLICATE_REGION: 1,
    imagenome.BAD_COORDINATES: 1,
    imagenome.NO_REGION_NAME: 1,
  }


def test_a_file_without_an_image_size_or_unreadable_is_an_error_naming_it(tmp_path):
  path = _write(tmp_path, DICOM_A, [_object(DICOM_A, "trachea", 700, 100, 800, 500)])
  with pytest.raises(
    imagenome.MissingImageSizeError, match=re.escape(f"{path}: no image size for dicom id")
  ):
    imagenome.read_scene_graph(path, {})
  bad = tmp_path / "bad_SceneGraph.json"
  bad.write_text('{"image_id": "bad", "objects": [')
  with pytest.raises(
    imagenome.SceneGraphError, match=re.escape(f"{bad}: not a readable JSON file")
  ):
    imagenome.read_scene_graph(bad, SIZES)


def test_read_scene_graph_dir_reads_what_it_can_and_reports_the_rest(tmp_path):
  _write(tmp_path, DICOM_A, [_object(DICOM_A, "trachea", 700, 100, 800, 500)])
  _write(
    tmp_path,
    DICOM_B,
    [_object(DICOM_B, "aortic arch", 400, 150, 500, 250), _object(DICOM_B, "neck", 0, 0, 9, 9)],
  )
  (tmp_path / "broken_SceneGraph.json").write_text("{not json")
  _write(tmp_path, "no-size", [_object("no-size", "trachea", 1, 1, 2, 2)])
  _write(tmp_path, "other-id", [], name=f"renamed{imagenome.SCENE_GRAPH_SUFFIX}")
  (tmp_path / "README.txt").write_text("not a scene graph")

  result = imagenome.read_scene_graph_dir(str(tmp_path), image_sizes={**SIZES, "other-id": (9, 9)})
  assert sorted(result.boxes) == sorted([DICOM_A, DICOM_B])
  np.testing.assert_array_equal(
    result.boxes[DICOM_A][REGION_INDEX["trachea"]],
    np.float32([100 / 2000, 700 / 1600, 500 / 2000, 800 / 1600]),
  )
  np.testing.assert_array_equal(
    result.boxes[DICOM_B][REGION_INDEX["aortic arch"]],
    np.float32([150 / 1000, 400 / 800, 250 / 1000, 500 / 800]),
  )
  reasons = {path.split("/")[-1]: reason.split(":")[0] for path, reason in result.skipped_files}
  assert reasons == {
    "broken_SceneGraph.json": imagenome.UNREADABLE_FILE,
    "no-size_SceneGraph.json": imagenome.NO_IMAGE_SIZE,
    "renamed_SceneGraph.json": imagenome.ID_MISMATCH,
  }
  assert any("broken_SceneGraph.json" in reason for _, reason in result.skipped_files)
  assert result.other_files == 1 and result.missing_dicom_ids == []
  assert result.object_notes == {imagenome.UNKNOWN_REGION: 1} and result.unknown_regions == {
    "neck": 1
  }
  summary = result.summary()
  assert "read: 2, skipped: 3" in summary and f"{imagenome.NO_IMAGE_SIZE}): 1" in summary

  chosen = imagenome.read_scene_graph_dir(str(tmp_path), [DICOM_B, "absent-id"], image_sizes=SIZES)
  assert list(chosen.boxes) == [DICOM_B] and chosen.missing_dicom_ids == ["absent-id"]
  assert chosen.skipped_files == [] and chosen.other_files == 0


def test_image_sizes_from_mimic_metadata(tmp_path):
  path = tmp_path / "mimic-cxr-2.0.0-metadata.csv"
  path.write_text(
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
    f"{DICOM_A},10000032,50414267,CHEST (PA AND LAT),PA,3056,2544\n"
    f"{DICOM_B},10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544.0\n"
  )
  assert imagenome.image_sizes_from_mimic_metadata(str(path)) == {
    DICOM_A: (3056, 2544),
    DICOM_B: (3056, 2544),
  }
  bad = tmp_path / "bad.csv"
  bad.write_text("dicom_id,Rows\nx,1\n")
  with pytest.raises(ValueError, match=re.escape(f"{bad}: no column 'Columns'")):
    imagenome.image_sizes_from_mimic_metadata(str(bad))
