"""Tests of the built-in synthetic chest X-ray set (`data_pipeline.phantoms`, its geometry
included)."""

import dataclasses
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import names, phantoms
from data_pipeline.names import CHEST_IMAGENOME_REGIONS, CHEXPERT_OBSERVATIONS, REGION_INDEX
from data_pipeline.phantoms import geometry, preview

SMALL = phantoms.PhantomConfig(image_size=64)
MEDIUM = phantoms.PhantomConfig(image_size=96)

# Words that name each finding kind in a report (any one must occur in its ground-truth words).
KIND_WORDS = {
  "nodule": ("nodul", "mass"),
  "consolidation": ("consolidat",),
  "pleural_effusion": ("effusion", "pleural fluid"),
  "pneumothorax": ("pneumothorax",),
  "cardiomegaly": ("cardiomegaly", "enlarge"),
  "atelectasis": ("atelecta",),
  "edema": ("edema",),
  "support_device": ("tube", "catheter", "line", "pacemaker"),
}
SECONDARY_LABELS = {"Lung Opacity", "Enlarged Cardiomediastinum"}


@pytest.fixture(scope="module")
def examples():
  """A few hundred small examples shared by the statistical tests."""
  return [phantoms.generate_example(i, config=SMALL) for i in range(300)]


def _same_example(a, b):
  assert a["image"].tobytes() == b["image"].tobytes()
  assert a["text"] == b["text"]
  assert a["study_id"] == b["study_id"] and a["patient_id"] == b["patient_id"]
  np.testing.assert_array_equal(a["labels"], b["labels"])
  np.testing.assert_array_equal(a["region_boxes"], b["region_boxes"])
  assert a["findings"] == b["findings"]


# ------------------------------------------------------------------------------------ geometry


def test_region_names_are_the_29_chest_imagenome_regions():
  assert len(CHEST_IMAGENOME_REGIONS) == 29 == len(set(CHEST_IMAGENOME_REGIONS))
  assert [REGION_INDEX[n] for n in CHEST_IMAGENOME_REGIONS] == list(range(29))
  official = os.path.join(
    os.path.dirname(__file__),
    "..",
    "..",
    "shared",
    "data",
    "anatomy",
    "chest_imagenome_regions.txt",
  )
  if os.path.exists(official):
    with open(official, encoding="utf-8") as f:
      assert tuple(line.strip() for line in f if line.strip()) == CHEST_IMAGENOME_REGIONS
  with pytest.raises(KeyError, match="not one of the 29"):
    names.region_id("left lower lobe")


def test_pose_round_trip_and_box_transforms():
  pose = geometry.Pose(shift_y=0.03, shift_x=-0.02, angle=math.radians(5), scale=0.95)
  v, u = np.random.default_rng(0).uniform(0, 1, (2, 50))
  y, x = pose.to_image(v, u)
  v2, u2 = pose.to_canonical(y, x)
  np.testing.assert_allclose(v2, v, atol=1e-12)
  np.testing.assert_allclose(u2, u, atol=1e-12)
  boxes = np.array([[0.2, 0.3, 0.4, 0.6], [0.5, 0.1, 0.9, 0.2]])
  vectorised = pose.boxes_to_image(boxes)
  for box, expected in zip(boxes, vectorised, strict=True):
    np.testing.assert_allclose(pose.box_to_image(tuple(box)), expected, atol=1e-6)
  # The identity pose leaves boxes unchanged.
  np.testing.assert_allclose(geometry.Pose().boxes_to_image(boxes), boxes, atol=1e-6)


def test_region_boxes_follow_anatomy_and_pose():
  rng = np.random.default_rng(3)
  for _ in range(20):
    chest = geometry.sample_geometry(rng)
    pose = geometry.sample_pose(rng)
    boxes = chest.region_boxes(pose)
    assert boxes.shape == (29, 4) and boxes.dtype == np.float32
    assert np.all(boxes >= 0) and np.all(boxes <= 1)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    named = geometry.region_box_dict(boxes)
    # Radiological convention: the patient's right lung is on the image's left.
    assert named["right lung"][1] < named["left lung"][1]
    # Lung zones run top to bottom and sit inside their lung.
    for side in geometry.SIDES:
      tops = [named[f"{side} {z} lung zone"][0] for z in ("upper", "mid", "lower")]
      assert tops == sorted(tops)
      for zone in ("upper", "mid", "lower"):
        assert (
          geometry.box_inside_fraction(named[f"{side} {zone} lung zone"], named[f"{side} lung"])
          > 0.95
        )
    assert named["carina"][0] < named["cardiac silhouette"][0] < named["abdomen"][2]
    # A lung centre really is inside the drawn lung field.
    canonical = chest.canonical_region_boxes()["right mid lung zone"]
    v, u = (canonical[0] + canonical[2]) / 2, (canonical[1] + canonical[3]) / 2
    assert chest.lung_signed_distance(v, u, "right") < 0
    assert chest.lung_signed_distance(v, u, "left") > 0


def test_enlarged_heart_grows_the_cardiac_silhouette():
  chest = geometry.sample_geometry(np.random.default_rng(1))
  bigger = chest.with_enlarged_heart(1.3)
  before = chest.canonical_region_boxes()["cardiac silhouette"]
  after = bigger.canonical_region_boxes()["cardiac silhouette"]
  assert (after[3] - after[1]) > 1.2 * (before[3] - before[1])


# ------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_bytes():
  _same_example(
    phantoms.generate_example(7, config=SMALL), phantoms.generate_example(7, config=SMALL)
  )


def test_examples_differ_by_index_split_and_seed():
  base = phantoms.generate_example(3, config=SMALL)
  for other in (
    phantoms.generate_example(4, config=SMALL),
    phantoms.generate_example(3, split="test", config=SMALL),
    phantoms.generate_example(3, seed=1, config=SMALL),
  ):
    assert other["image"].tobytes() != base["image"].tobytes()
    assert other["study_id"] != base["study_id"]


def test_example_does_not_depend_on_generation_order():
  forward = phantoms.generate_split(6, split="validation", seed=2, config=SMALL)
  backward = [
    phantoms.generate_example(i, split="validation", seed=2, config=SMALL)
    for i in reversed(range(6))
  ]
  for i, example in enumerate(reversed(backward)):
    assert forward["image"][i].tobytes() == example["image"].tobytes()
    assert forward["text"][i] == example["text"]
  tail = phantoms.generate_split(3, split="validation", seed=2, config=SMALL, start=3)
  np.testing.assert_array_equal(tail["image"], forward["image"][3:])
  np.testing.assert_array_equal(tail["index"], [3, 4, 5])


# ------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("size", [64, 100, 160])
def test_image_dtype_shape_range_and_anatomy(size):
  config = phantoms.PhantomConfig(image_size=size, max_findings=0)
  for index in range(4):
    example = phantoms.generate_example(index, config=config)
    image = example["image"]
    assert image.dtype == np.uint8 and image.shape == (size, size, 1)
    assert image.min() < 40 and image.max() > 180  # uses the dynamic range
    named = geometry.region_box_dict(example["region_boxes"])

    def centre_mean(name, shrink=0.3, named=named, image=image):
      y0, x0, y1, x1 = named[name]
      dy, dx = (y1 - y0) * shrink, (x1 - x0) * shrink
      rows = slice(int((y0 + dy) * size), max(int((y1 - dy) * size), int((y0 + dy) * size) + 1))
      cols = slice(int((x0 + dx) * size), max(int((x1 - dx) * size), int((x0 + dx) * size) + 1))
      return float(image[rows, cols].mean())

    # Aerated lung is darker than the heart and the abdomen, as on a radiograph.
    for lung in ("right mid lung zone", "left upper lung zone"):
      assert centre_mean(lung) + 25 < centre_mean("cardiac silhouette")
      assert centre_mean(lung) + 25 < centre_mean("abdomen")


def test_findings_change_pixels_inside_their_boxes():
  """Removing one finding from a plan changes pixels inside its box, hardly anywhere else."""
  size = 96
  seen = set()
  for index in range(400):
    plan = phantoms.plan_example(index)
    for k, spec in enumerate(plan.findings):
      key = spec.variant if spec.kind == "support_device" else spec.kind
      if key in seen:
        continue
      seen.add(key)
      full = phantoms.render_plan(plan, size)
      rest = tuple(f for j, f in enumerate(plan.findings) if j != k)
      without = phantoms.render_plan(dataclasses.replace(plan, findings=rest), size)
      diff = np.abs(full.image[..., 0].astype(np.float32) - without.image[..., 0])
      y0, x0, y1, x1 = (int(round(b * size)) for b in full.finding_boxes[k])
      inside = np.zeros(diff.shape, bool)
      inside[y0:y1, x0:x1] = True
      assert diff[inside].mean() > 4.0, (key, index)  # visible
      assert diff[inside].mean() > 10 * diff[~inside].mean() + 1e-6, (key, index)  # localised
  expected = set(phantoms.FINDING_NAMES) - {"support_device"} | set(phantoms.DEVICE_VARIANTS)
  assert seen == expected


def test_findings_leave_the_rest_of_the_image_untouched():
  """Noise and anatomy have their own streams: adding local findings changes only their boxes."""
  size = 96
  local = {
    "nodule",
    "consolidation",
    "atelectasis",
    "pneumothorax",
    "pleural_effusion",
  }  # not diffuse
  checked = 0
  for index in range(200):
    plan = phantoms.plan_example(index)
    if not plan.findings or not {f.kind for f in plan.findings} <= local:
      continue
    full = phantoms.render_plan(plan, size)
    clear = phantoms.render_plan(dataclasses.replace(plan, findings=()), size)
    touched = np.zeros((size, size), bool)
    for y0, x0, y1, x1 in full.finding_boxes:  # boxes grown by the soft edges of the shapes
      touched[
        max(int(y0 * size) - 4, 0) : int(y1 * size) + 4,
        max(int(x0 * size) - 4, 0) : int(x1 * size) + 4,
      ] = True
    assert np.array_equal(full.image[..., 0][~touched], clear.image[..., 0][~touched]), index
    assert not np.array_equal(full.image, clear.image)
    checked += 1
  assert checked >= 10


# ------------------------------------------------------------------------------------ ground truth


def test_ground_truth_boxes_lie_in_the_image_and_their_region(examples):
  kinds = set()
  for example in examples:
    for finding in example["findings"]:
      kinds.add(finding["name"])
      y0, x0, y1, x1 = finding["box"]
      assert 0.0 <= y0 < y1 <= 1.0 and 0.0 <= x0 < x1 <= 1.0
      assert finding["region"] in REGION_INDEX
      assert finding["region_id"] == REGION_INDEX[finding["region"]]
      region = example["region_boxes"][finding["region_id"]]
      assert geometry.box_inside_fraction(finding["box"], region) >= 0.5, finding
      cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
      assert (
        region[0] - 0.05 <= cy <= region[2] + 0.05 and region[1] - 0.05 <= cx <= region[3] + 0.05
      )
      assert finding["severity"] in (0, 1, 2, 3)
      assert (finding["severity"] == 0) == (finding["name"] == "support_device")
  assert kinds == set(phantoms.FINDING_NAMES)


def test_lateral_findings_sit_on_their_side(examples):
  for example in examples:
    for finding in example["findings"]:
      if finding["side"] in ("right", "left") and finding["name"] != "support_device":
        assert finding["region"].startswith(finding["side"])
        centre_x = (finding["box"][1] + finding["box"][3]) / 2
        midline = (
          example["region_boxes"][REGION_INDEX["spine"]][1]
          + example["region_boxes"][REGION_INDEX["spine"]][3]
        ) / 2
        assert (centre_x < midline) == (finding["side"] == "right"), finding


def test_finding_words_occur_in_the_report(examples):
  for example in examples:
    text = example["text"]
    assert example["text"] == f"{example['findings_text']} {example['impression_text']}"
    for finding in example["findings"]:
      start, end = finding["span"]
      assert text[start:end] == finding["words"]
      assert end <= len(example["findings_text"])  # described in the findings section
      t0, t1 = finding["term_span"]
      assert start <= t0 < t1 <= end and text[t0:t1] == finding["term"]
      words = finding["words"].lower()
      assert any(w in words for w in KIND_WORDS[finding["name"]]), finding
      if finding["severity_word"]:
        assert finding["severity_word"] in finding["words"]
      if (
        finding["name"] not in ("edema", "cardiomegaly", "support_device")
        and "bilateral" not in words
        and "bibasilar" not in words
      ):
        assert finding["side"] in words, finding
      assert "XXXX" not in finding["words"]


def test_negated_findings_are_not_in_the_ground_truth(examples):
  negated_any = 0
  for example in examples:
    present = {f["name"] for f in example["findings"]}
    for sentence in re.split(r"(?<=\.)\s+", example["text"]):
      lowered = sentence.lower()
      if not re.search(r"\b(no|without)\b", lowered):
        continue
      for kind, words in KIND_WORDS.items():
        if kind in ("support_device", "cardiomegaly"):
          continue
        if any(w in lowered for w in words):
          negated_any += 1
          assert kind not in present, (sentence, present)
          label = CHEXPERT_OBSERVATIONS.index(phantoms.FINDING_TO_CHEXPERT[kind])
          assert example["labels"][label] != 1.0
  assert negated_any > 100


def test_labels_are_consistent_with_findings(examples):
  index = CHEXPERT_OBSERVATIONS.index
  for example in examples:
    labels = example["labels"]
    assert labels.dtype == np.float32 and labels.shape == (14,)
    assert all(np.isnan(x) or x in (-1.0, 0.0, 1.0) for x in labels)
    kinds = {f["name"] for f in example["findings"]}
    for kind in kinds:
      assert labels[index(phantoms.FINDING_TO_CHEXPERT[kind])] == 1.0
    for name, value in zip(CHEXPERT_OBSERVATIONS, labels, strict=True):
      if value == 1.0 and name not in SECONDARY_LABELS | {"No Finding"}:
        assert any(phantoms.FINDING_TO_CHEXPERT[k] == name for k in kinds), (name, kinds)
      if value == -1.0:
        assert name == "Pneumonia" and "consolidation" in kinds
    pathology = kinds - {"support_device"}
    if pathology:
      assert np.isnan(labels[index("No Finding")])
    else:
      assert labels[index("No Finding")] == 1.0
    for never in ("Pleural Other",):
      assert np.isnan(labels[index(never)])


def test_reports_read_like_radiology_reports(examples):
  texts = [e["text"] for e in examples]
  assert len(set(texts)) > 0.8 * len(texts)
  normal = [e for e in examples if not e["findings"]]
  assert normal and any("lungs are clear" in e["text"].lower() for e in normal)
  assert sum("XXXX" in t for t in texts) > 10
  assert sum("omparison" in t or "ompared" in t for t in texts) > 10
  assert any(re.search(r"\b1\. .* 2\. ", e["impression_text"]) for e in examples)
  severity_words = {f["severity_word"].lower() for e in examples for f in e["findings"]}
  assert {"small", "moderate", "large", "mild"} <= severity_words
  # Synonyms: the same finding is not always named with the same term.
  terms = {
    f["term"].lower() for e in examples for f in e["findings"] if f["name"] == "pleural_effusion"
  }
  assert len(terms) >= 2
  for text in texts:
    assert text.strip() == text and "  " not in text and text.endswith(".")


def test_patients_and_studies():
  ids = [phantoms.plan_example(i) for i in range(200)]
  study_ids = [p.study_id for p in ids]
  assert len(set(study_ids)) == len(study_ids)
  by_patient = {}
  for plan in ids:
    by_patient.setdefault(plan.patient_id, []).append(plan)
  repeated = [plans for plans in by_patient.values() if len(plans) == 2]
  assert 10 < len(repeated) < 60
  for first, second in repeated:
    assert second.is_followup and not first.is_followup
    assert first.geometry == second.geometry  # same body, new pose and findings
    assert first.pose != second.pose
  other_split = {phantoms.plan_example(i, split="test").patient_id for i in range(200)}
  assert not other_split & set(by_patient)


def test_max_findings_zero_gives_normal_studies():
  config = phantoms.PhantomConfig(image_size=64, max_findings=0)
  for index in range(10):
    example = phantoms.generate_example(index, config=config)
    assert example["findings"] == []
    assert example["labels"][CHEXPERT_OBSERVATIONS.index("No Finding")] == 1.0


def test_config_is_validated():
  with pytest.raises(ValueError, match="max_findings"):
    phantoms.PhantomConfig(max_findings=4)
  with pytest.raises(ValueError, match="abnormal_probability"):
    phantoms.PhantomConfig(abnormal_probability=1.5)
  with pytest.raises(ValueError, match="unknown finding kind"):
    phantoms.PhantomConfig(finding_weights=(("fracture", 1.0),))
  with pytest.raises(ValueError, match="image_size"):
    phantoms.PhantomConfig(image_size=16)


def test_finding_weights_select_kinds():
  config = phantoms.PhantomConfig(
    image_size=64,
    abnormal_probability=1.0,
    max_findings=1,
    finding_weights=(("pneumothorax", 1.0),),
  )
  for index in range(5):
    example = phantoms.generate_example(index, config=config)
    assert [f["name"] for f in example["findings"]] == ["pneumothorax"]


# ------------------------------------------------------------------------------------ arrays /
#   tf.data


def test_findings_to_arrays_pads_and_round_trips(examples):
  example = next(e for e in examples if len(e["findings"]) >= 2)
  arrays = phantoms.findings_to_arrays(example["findings"])
  n = len(example["findings"])
  assert arrays["finding_valid"].tolist() == [True] * n + [False] * (phantoms.MAX_FINDINGS - n)
  assert arrays["finding_id"].dtype == np.int32 and arrays["finding_box"].dtype == np.float32
  assert arrays["finding_box"].shape == (phantoms.MAX_FINDINGS, 4)
  assert arrays["finding_span"].shape == (phantoms.MAX_FINDINGS, 2)
  for i, finding in enumerate(example["findings"]):
    assert phantoms.FINDING_NAMES[arrays["finding_id"][i]] == finding["name"]
    assert CHEST_IMAGENOME_REGIONS[arrays["finding_region"][i]] == finding["region"]
    np.testing.assert_allclose(arrays["finding_box"][i], finding["box"], atol=1e-6)
    s, e = arrays["finding_span"][i]
    assert example["text"][s:e] == finding["words"]
  assert np.all(arrays["finding_id"][n:] == -1) and np.all(arrays["finding_region"][n:] == -1)
  with pytest.raises(ValueError, match="do not fit"):
    phantoms.findings_to_arrays(example["findings"], max_findings=1)


def test_generate_split_stacks_examples():
  split = phantoms.generate_split(5, split="test", seed=4, config=SMALL)
  assert split["image"].shape == (5, 64, 64, 1) and split["image"].dtype == np.uint8
  assert split["labels"].shape == (5, 14) and split["region_boxes"].shape == (5, 29, 4)
  assert split["finding_box"].shape == (5, phantoms.MAX_FINDINGS, 4)
  assert len(split["text"]) == len(split["study_id"]) == len(split["findings"]) == 5
  one = phantoms.generate_example(2, split="test", seed=4, config=SMALL)
  assert split["text"][2] == one["text"] and split["findings"][2] == one["findings"]
  np.testing.assert_array_equal(split["finding_valid"][2].sum(), len(one["findings"]))
  empty = phantoms.generate_split(0, config=SMALL)
  assert empty["image"].shape == (0, 64, 64, 1) and empty["finding_id"].shape == (
    0,
    phantoms.MAX_FINDINGS,
  )


def test_tf_dataset_yields_generate_example():
  tf = pytest.importorskip("tensorflow")
  dataset = phantoms.as_tf_dataset(4, split="train", seed=3, config=SMALL, num_parallel_calls=2)
  keys = [key for key, _, _ in phantoms.TF_FEATURES]
  assert sorted(dataset.element_spec) == sorted(keys)
  assert dataset.element_spec["image"].shape == (64, 64, 1)
  for index, element in enumerate(dataset.as_numpy_iterator()):
    expected = phantoms.example_to_features(phantoms.generate_example(index, seed=3, config=SMALL))
    for key in keys:
      np.testing.assert_array_equal(element[key], expected[key], err_msg=key)
    assert (
      element["text"].decode() == phantoms.generate_example(index, seed=3, config=SMALL)["text"]
    )
  del tf


def test_generator_imports_neither_jax_nor_tensorflow():
  code = (
    "import sys; import data_pipeline.phantoms as p; p.generate_example(0, "
    "config=p.PhantomConfig(image_size=64)); "
    "bad = [m for m in ('jax', 'jimte', 'tensorflow') if m in sys.modules]; assert not bad, bad"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_preview_cli_writes_images_and_reports(tmp_path):
  preview.main(["--out", str(tmp_path), "--n", "2", "--image-size", "64", "--start", "6"])
  names = sorted(os.listdir(tmp_path))
  assert names == [
    "00006.png",
    "00006.txt",
    "00006_boxes.png",
    "00007.png",
    "00007.txt",
    "00007_boxes.png",
  ]
  report = (tmp_path / "00006.txt").read_text()
  assert "FINDINGS:" in report and "IMPRESSION:" in report


def test_preview_runs_as_a_module(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, "-m", "data_pipeline.phantoms", "--out", str(tmp_path), "--n", "1"]
  subprocess.run(command + ["--image-size", "32"], check=True, cwd=root, capture_output=True)
  assert sorted(os.listdir(tmp_path)) == ["00000.png", "00000.txt", "00000_boxes.png"]


def test_config_data_phantom_sets_the_generator_knobs_and_names_bad_ones():
  from configs import default
  from jimte import data as data_lib

  c = default.get_config()
  # The demo's default (docs/ablations.md): 90% of studies abnormal, the generator's default else.
  assert data_lib.phantom_config(c.data) == phantoms.PhantomConfig(
    image_size=c.data.phantom_size, abnormal_probability=0.9
  )
  c.data.phantom.abnormal_probability = 1.0
  made = data_lib.phantom_config(c.data)
  assert made.abnormal_probability == 1.0
  split = phantoms.generate_split(12, split="train", seed=0, config=made)
  assert all(len(f) > 0 for f in split["findings"])  # every study abnormal
  c.data.phantom.abnormal_probability = 1.5
  with pytest.raises(ValueError, match=r"config\.data\.phantom: abnormal_probability"):
    data_lib.phantom_config(c.data)
  c.data.phantom = {"abnormal_prob": 0.5}
  with pytest.raises(ValueError, match=r"config\.data\.phantom\.abnormal_prob: not a knob"):
    data_lib.phantom_config(c.data)
