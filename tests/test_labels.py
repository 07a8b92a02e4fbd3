"""Tests for the rule-based report labeler (`data_pipeline.labels`).

Most tests use the CheXpert phrase lists of `shared/data/labelers/chexpert/phrases` and skip when
that checkout is absent; the loader/configuration tests build their own tiny phrase lists. One
file over ~500 lines on purpose: the sentence tables of every rule family share the labeler
fixture, and reading them side by side is how a rule change is reviewed.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import labels as L
from data_pipeline.labels import (
  LabelResult,
  Mention,
  ReportLabeler,
  split_sentences,
)
from data_pipeline.names import CHEST_IMAGENOME_REGIONS, CHEXPERT_OBSERVATIONS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PHRASES = SHARED / "labelers" / "chexpert" / "phrases"
NAN = float("nan")


@pytest.fixture(scope="module")
def labeler() -> ReportLabeler:
  if not (PHRASES / "mention").is_dir():
    pytest.skip(f"CheXpert phrase lists not found at {PHRASES}")
  return ReportLabeler(PHRASES)


def value(labeler: ReportLabeler, text: str, observation: str) -> float:
  """The label of one observation for one report."""
  return float(labeler.label(text).labels[CHEXPERT_OBSERVATIONS.index(observation)])


def same(a: float, b: float) -> bool:
  return (math.isnan(a) and math.isnan(b)) or a == b


# --------------------------------------------------------------------------------------------------
# Constants and configuration
# --------------------------------------------------------------------------------------------------


def test_observation_order_is_the_chexpert_column_order():
  assert len(CHEXPERT_OBSERVATIONS) == 14
  assert CHEXPERT_OBSERVATIONS[0] == "No Finding"
  assert CHEXPERT_OBSERVATIONS[-1] == "Support Devices"
  example = SHARED / "labelers" / "chexpert" / "labeled_reports_example.csv"
  if example.is_file():
    with open(example, newline="") as fh:
      header = next(csv.reader(fh))
    assert tuple(header[1:]) == CHEXPERT_OBSERVATIONS


def test_regions_match_the_chest_imagenome_list():
  assert len(CHEST_IMAGENOME_REGIONS) == 29 == len(set(CHEST_IMAGENOME_REGIONS))
  path = SHARED / "anatomy" / "chest_imagenome_regions.txt"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
  assert names == CHEST_IMAGENOME_REGIONS


def _write_phrases(root: Path, mention: dict, unmention: dict | None = None) -> Path:
  (root / "mention").mkdir(parents=True)
  for obs in CHEXPERT_OBSERVATIONS:
    stem = obs.lower().replace(" ", "_")
    (root / "mention" / f"{stem}.txt").write_text("\n".join(mention.get(obs, ())) + "\n")
  if unmention:
    (root / "unmention").mkdir()
    for obs, phrases in unmention.items():
      (root / "unmention" / f"{obs.lower().replace(' ', '_')}.txt").write_text("\n".join(phrases))
  return root


def test_missing_phrase_dir_error_names_the_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match="nowhere"):
    ReportLabeler(missing)


def test_missing_mention_file_error_names_the_file(tmp_path):
  root = _write_phrases(tmp_path / "p", {"Pneumonia": ["pneumonia"]})
  (root / "mention" / "fracture.txt").unlink()
  with pytest.raises(FileNotFoundError, match="fracture.txt"):
    ReportLabeler(root)


def test_labeler_reads_the_given_lists_and_unmentions(tmp_path):
  root = _write_phrases(
    tmp_path / "p",
    {"Pneumonia": ["# a comment", "zorblax", ""], "Lung Lesion": ["mass"]},
    {"Lung Lesion": ["massive"]},
  )
  lab = ReportLabeler(root)
  assert lab.mention_phrases["Pneumonia"] == ("zorblax",)
  assert value(lab, "No zorblax.", "Pneumonia") == 0.0
  assert value(lab, "Right lower lobe zorblax.", "Pneumonia") == 1.0
  assert value(lab, "Pneumonia.", "Pneumonia") != value(
    lab, "Pneumonia.", "Pneumonia"
  )  # not a phrase here
  assert math.isnan(value(lab, "Massive hernia.", "Lung Lesion"))
  assert value(lab, "Small mass.", "Lung Lesion") == 1.0


def test_environment_variable_selects_the_phrase_dir(tmp_path, monkeypatch):
  root = _write_phrases(tmp_path / "env", {"Edema": ["quxedema"]})
  monkeypatch.setenv(L.PHRASES_ENV_VAR, str(root))
  assert L.default_phrases_dir() == root
  assert value(ReportLabeler(), "Mild quxedema.", "Edema") == 1.0


def test_underscore_marks_a_word_boundary(tmp_path):
  root = _write_phrases(tmp_path / "p", {"Enlarged Cardiomediastinum": ["_mediastinum"]})
  lab = ReportLabeler(root)
  assert math.isnan(value(lab, "Pneumomediastinum is enlarged.", "Enlarged Cardiomediastinum"))
  assert value(lab, "The mediastinum is widened.", "Enlarged Cardiomediastinum") == 1.0


# --------------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------------


def test_module_imports_neither_jax_nor_jimte():
  import subprocess
  import sys

  code = (
    "import sys, data_pipeline.labels; "
    "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'jimte', 'flax')]; "
    "assert not bad, bad"
  )
  repo = Path(__file__).resolve().parents[1]
  subprocess.run([sys.executable, "-c", code], check=True, cwd=repo)


def test_split_sentences():
  text = "1. Left effusion vs. atelectasis, 1.5 cm. Heart normal?\n\nNo pneumothorax"
  parts = [text[s:e] for s, e in split_sentences(text)]
  assert parts == [
    "1.",
    "Left effusion vs. atelectasis, 1.5 cm.",
    "Heart normal?",
    "No pneumothorax",
  ]
  assert split_sentences("   ") == []


# --------------------------------------------------------------------------------------------------
# Negation, uncertainty, aggregation
# --------------------------------------------------------------------------------------------------

P, N, U = 1.0, 0.0, -1.0

STATUS_CASES = [
  # negation lists and cue families
  (
    "No pneumothorax, effusion, or consolidation.",
    {"Pneumothorax": N, "Pleural Effusion": N, "Consolidation": N},
  ),
  (
    "There is no focal airspace consolidation, pleural effusion or pneumothorax.",
    {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N},
  ),
  (
    "Lungs are clear without focal consolidation, effusion, or pneumothorax.",
    {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N},
  ),
  (
    "No pneumonia, effusions, edema, pneumothorax, adenopathy, nodules or masses.",
    {"Pneumonia": N, "Pleural Effusion": N, "Edema": N, "Pneumothorax": N, "Lung Lesion": N},
  ),
  ("Negative for pneumothorax.", {"Pneumothorax": N}),
  ("The lungs are free of infiltrate.", {"Lung Opacity": N}),
  ("There is no evidence of pneumonia.", {"Pneumonia": N}),
  ("Pneumothorax is not seen.", {"Pneumothorax": N}),
  ("The nodular density is not well-seen on today's study.", {"Lung Lesion": N}),
  ("The left effusion has resolved.", {"Pleural Effusion": N}),
  ("Interval resolution of the right pneumothorax.", {"Pneumothorax": N}),
  ("The chest tube has been removed.", {"Support Devices": N}),
  ("Nonconsolidating opacity.", {"Consolidation": N, "Lung Opacity": P}),
  ("Cardiomegaly without overt edema.", {"Cardiomegaly": P, "Edema": N}),
  # clause scope
  (
    "No evidence of pneumonia, but there is a small left effusion.",
    {"Pneumonia": N, "Pleural Effusion": P},
  ),
  ("No pneumothorax. Small right pleural effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
  ("No pneumothorax; small bilateral effusions.", {"Pneumothorax": N, "Pleural Effusion": P}),
  ("There is no effusion and the heart is enlarged.", {"Pleural Effusion": N, "Cardiomegaly": P}),
  (
    "Consolidation, atelectasis, and blunting in the left lower lobe have cleared in the interval.",
    {"Consolidation": N, "Atelectasis": N},
  ),
  # uncertainty
  ("Possible right lower lobe pneumonia.", {"Pneumonia": U}),
  ("Opacity at the left base may represent atelectasis.", {"Lung Opacity": P, "Atelectasis": U}),
  (
    "Minimal patchy airspace disease within the lingula, may reflect atelectasis or consolidation.",
    {"Lung Opacity": P, "Atelectasis": U, "Consolidation": U},
  ),
  ("Atelectasis versus pneumonia at the left base.", {"Atelectasis": U, "Pneumonia": U}),
  ("Left basilar opacity, likely atelectasis.", {"Lung Opacity": P, "Atelectasis": U}),
  ("Atelectasis is likely.", {"Atelectasis": U}),
  ("Questionable small nodule in the left upper lobe.", {"Lung Lesion": U}),
  ("Findings are suggestive of pulmonary edema.", {"Edema": U}),
  (
    "Left lower lobe airspace disease concerning for pneumonia.",
    {"Lung Opacity": P, "Pneumonia": U},
  ),
  ("Small effusion may be present.", {"Pleural Effusion": U}),
  ("Pneumonia?", {"Pneumonia": U}),
  ("Please correlate clinically for pneumonia.", {"Pneumonia": U}),
  # double negatives are uncertainty
  ("Pneumothorax cannot be excluded.", {"Pneumothorax": U}),
  ("Cannot exclude small left pleural effusion.", {"Pleural Effusion": U}),
  ("A small effusion is not excluded.", {"Pleural Effusion": U}),
  ("Pneumonia is not ruled out.", {"Pneumonia": U}),
  ("It would be difficult to completely exclude a superimposed pneumonia.", {"Pneumonia": U}),
  # modifiers inside a negated list stay negated
  ("No suspicious pulmonary nodules.", {"Lung Lesion": N}),
  ("No focal consolidation to suggest pneumonia.", {"Consolidation": N, "Pneumonia": N}),
  (
    "No focal consolidation, suspicious pulmonary opacity, pneumothorax or definite pleural "
    "effusion.",
    {"Consolidation": N, "Lung Opacity": N, "Pneumothorax": N, "Pleural Effusion": N},
  ),
  (
    "There is no pleural line to suggest pneumothorax or blunting to suggest large pleural "
    "effusion.",
    {"Pneumothorax": N, "Pleural Effusion": N},
  ),
  ("No pneumothorax, possible small left effusion.", {"Pneumothorax": N, "Pleural Effusion": U}),
  # pseudo-negations
  ("No change in the left pleural effusion.", {"Pleural Effusion": P}),
  ("No significant interval change in the cardiomegaly.", {"Cardiomegaly": P}),
  ("Partially resolved right lower lobe consolidation.", {"Consolidation": P}),
  # attribute mentions need a qualifier
  ("Heart size is normal.", {"Cardiomegaly": N}),
  ("Normal heart size.", {"Cardiomegaly": N}),
  (
    "The heart is normal in size and contour.",
    {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N},
  ),
  (
    "Heart size and mediastinal contours are within normal limits.",
    {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N},
  ),
  ("The heart is not significantly enlarged.", {"Cardiomegaly": N}),
  ("No enlargement of the heart.", {"Cardiomegaly": N}),
  ("The heart is mildly enlarged.", {"Cardiomegaly": P}),
  ("There is stable enlargement of the heart.", {"Cardiomegaly": P}),
  ("Heart size is upper limits of normal.", {"Cardiomegaly": U}),
  ("The heart is borderline enlarged.", {"Cardiomegaly": U}),
  ("Heart size may be mildly enlarged.", {"Cardiomegaly": U}),
  ("Borderline cardiomegaly.", {"Cardiomegaly": U}),
  ("Stable heart size.", {"Cardiomegaly": NAN}),
  ("Limited assessment of heart size.", {"Cardiomegaly": NAN}),
  ("The heart and lungs have XXXX XXXX in the interval.", {"Cardiomegaly": NAN}),
  ("The cardiomediastinal silhouette is enlarged.", {"Enlarged Cardiomediastinum": P}),
  ("Widened mediastinum.", {"Enlarged Cardiomediastinum": P}),
  ("Stable cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": NAN}),
  # unmention lists and project exclusions
  ("Small pericardial effusion.", {"Pleural Effusion": NAN}),
  ("Calcified nodule in the right upper lobe.", {"Lung Lesion": NAN}),
  ("Scattered calcified nodules.", {"Lung Lesion": NAN}),
  ("Uncalcified nodule in the lingula.", {"Lung Lesion": P}),
  ("Massive right pleural effusion.", {"Lung Lesion": NAN, "Pleural Effusion": P}),
  ("Right pleural scarring.", {"Lung Opacity": NAN, "Pleural Other": P}),
  ("No evidence of tuberculosis.", {"Support Devices": NAN}),
  (
    "Platelike atelectasis at the left base. Endplate sclerosis.",
    {"Support Devices": NAN, "Atelectasis": P},
  ),
  ("Residuals of prior granulomatous infection.", {"Pneumonia": NAN}),
  ("Changes of cystic fibrosis.", {"Pleural Other": NAN}),
  # CheXpert aggregation conventions
  ("No effusion. Possible effusion. Small left effusion.", {"Pleural Effusion": P}),
  ("No effusion. Possible left effusion.", {"Pleural Effusion": U}),
  ("Findings consistent with CHF.", {"Edema": P, "Cardiomegaly": U}),
  ("Cardiomegaly. No CHF.", {"Cardiomegaly": P, "Edema": N}),
]


@pytest.mark.parametrize("text,expected", STATUS_CASES, ids=[c[0][:50] for c in STATUS_CASES])
def test_status_rules(labeler, text, expected):
  got = labeler.label(text).as_dict()
  wrong = {obs: (got[obs], want) for obs, want in expected.items() if not same(got[obs], want)}
  assert not wrong, f"{text!r}: (got, want) {wrong}"


NO_FINDING_CASES = [
  ("Heart size normal and lungs are clear. No edema or pneumonia. No effusion", 1.0),
  ("No acute cardiopulmonary abnormality.", 1.0),
  ("Right IJ catheter tip in the SVC. Lungs are clear.", 1.0),  # devices do not count
  ("No emphysema. Lungs are clear.", 1.0),  # a negated "other finding" does not count
  ("Hyperinflated lungs compatible with emphysema.", NAN),  # a positive "other finding"
  ("Degenerative changes of the thoracic spine.", NAN),
  ("Borderline cardiomegaly.", NAN),  # uncertain counts as a finding
  ("Left pleural effusion.", NAN),
  ("", NAN),  # nothing said
]


@pytest.mark.parametrize(
  "text,expected", NO_FINDING_CASES, ids=[c[0][:40] or "empty" for c in NO_FINDING_CASES]
)
def test_no_finding_rule(labeler, text, expected):
  assert same(value(labeler, text, "No Finding"), expected)


def test_empty_and_none_reports_are_all_unmentioned(labeler):
  for text in ("", "   \n ", None):
    res = labeler.label(text)
    assert res.labels.dtype == np.float32 and res.labels.shape == (14,)
    assert np.isnan(res.labels).all() and res.mentions == ()


# --------------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------------

REGION_CASES = [
  ("Right basilar atelectasis.", "Atelectasis", ("right lower lung zone",)),
  (
    "Bilateral effusions.",
    "Pleural Effusion",
    ("right costophrenic angle", "left costophrenic angle"),
  ),
  ("Small left pleural effusion.", "Pleural Effusion", ("left costophrenic angle",)),
  (
    "Pleural effusion.",
    "Pleural Effusion",
    ("right costophrenic angle", "left costophrenic angle"),
  ),
  ("Cardiomegaly.", "Cardiomegaly", ("cardiac silhouette",)),
  ("Right apical pneumothorax.", "Pneumothorax", ("right apical zone",)),
  ("Small left pneumothorax.", "Pneumothorax", ("left lung",)),
  ("Pneumothorax.", "Pneumothorax", ("right lung", "left lung")),
  ("Bibasilar atelectasis.", "Atelectasis", ("right lower lung zone", "left lower lung zone")),
  ("Basilar atelectasis.", "Atelectasis", ("right lower lung zone", "left lower lung zone")),
  ("Left lower lobe consolidation.", "Consolidation", ("left lower lung zone",)),
  ("Retrocardiac opacity.", "Lung Opacity", ("left lower lung zone",)),
  ("Lingular atelectasis.", "Atelectasis", ("left mid lung zone",)),
  ("Focal airspace disease in the right middle lobe.", "Lung Opacity", ("right mid lung zone",)),
  (
    "Right upper and left lower lobe opacities.",
    "Lung Opacity",
    ("right upper lung zone", "left lower lung zone"),
  ),
  (
    "Opacities in the right upper and lower lobes.",
    "Lung Opacity",
    ("right upper lung zone", "right lower lung zone"),
  ),
  ("Streaky opacity at the left base.", "Lung Opacity", ("left lower lung zone",)),
  ("Biapical pleural thickening.", "Pleural Other", ("right apical zone", "left apical zone")),
  ("Perihilar edema.", "Edema", ("right hilar structures", "left hilar structures")),
  ("Mass in the right hilum.", "Lung Lesion", ("right hilar structures",)),
  (
    "Blunting of the right costophrenic angle from a small effusion.",
    "Pleural Effusion",
    ("right costophrenic angle",),
  ),
  ("Left pleural effusion with adjacent atelectasis.", "Atelectasis", ("left lung",)),
  ("Left basilar airspace disease/atelectasis.", "Atelectasis", ("left lower lung zone",)),
  ("Right effusion and left atelectasis.", "Pleural Effusion", ("right costophrenic angle",)),
  ("Right effusion and left atelectasis.", "Atelectasis", ("left lung",)),
  ("At the left base, there is atelectasis.", "Atelectasis", ("left lower lung zone",)),
  (
    "Enlarged cardiomediastinal silhouette.",
    "Enlarged Cardiomediastinum",
    ("mediastinum", "cardiac silhouette"),
  ),
  (
    "Widened superior mediastinum.",
    "Enlarged Cardiomediastinum",
    ("mediastinum", "upper mediastinum"),
  ),
  ("Old fracture of the left clavicle.", "Fracture", ("left clavicle",)),
  ("Compression fracture of the T12 vertebral body.", "Fracture", ("spine",)),
  ("Healed right rib fractures.", "Fracture", ("right lung",)),
  ("Fracture of the right humerus.", "Fracture", ()),
  ("Endotracheal tube 4 cm above the carina.", "Support Devices", ("trachea", "carina")),
  ("Right PICC in place.", "Support Devices", ("svc",)),
  (
    "Right IJ catheter tip at the cavoatrial junction.",
    "Support Devices",
    ("cavoatrial junction",),
  ),
  ("Nasogastric tube tip in the stomach.", "Support Devices", ("abdomen",)),
  ("Left chest tube.", "Support Devices", ("left lung",)),
  ("Dual-lead pacemaker.", "Support Devices", ("cardiac silhouette",)),
  # a finding with no place of its own takes the place of the finding it interprets
  (
    "XXXX opacities in the left lung base, likely atelectasis.",
    "Atelectasis",
    ("left lower lung zone",),
  ),
  (
    "Atelectasis or consolidation in the right lower lobe.",
    "Atelectasis",
    ("right lower lung zone",),
  ),
  # a trailing side completes a side-less zone; "both" of "both views" is not bilateral
  ("Minimal basilar atelectasis on the left.", "Atelectasis", ("left lower lung zone",)),
  (
    "Opacity in the left upper lung is seen on both PA and lateral views.",
    "Lung Opacity",
    ("left upper lung zone",),
  ),
  ("Focal opacity overlying the left 5th rib.", "Lung Opacity", ("left lung",)),
]


@pytest.mark.parametrize(
  "text,observation,regions", REGION_CASES, ids=[f"{c[1]}:{c[0][:40]}" for c in REGION_CASES]
)
def test_regions(labeler, text, observation, regions):
  found = labeler.finding_regions(text)
  assert found.get(observation) == tuple(sorted(regions, key=CHEST_IMAGENOME_REGIONS.index)), found


def test_finding_regions_skips_negative_mentions_and_no_finding(labeler):
  found = labeler.finding_regions(
    "No left pneumothorax. Right lower lobe pneumonia. Emphysema in the upper lobes."
  )
  assert set(found) == {"Pneumonia"}
  assert found["Pneumonia"] == ("right lower lung zone",)


# --------------------------------------------------------------------------------------------------
# Result structure
# --------------------------------------------------------------------------------------------------


def test_mention_fields(labeler):
  text = "Heart size normal.  Small right pleural effusion. Possible left lower lobe pneumonia."
  res = labeler.label(text)
  assert isinstance(res, LabelResult)
  assert all(isinstance(m, Mention) for m in res.mentions)
  by_obs = {m.observation: m for m in res.mentions}
  eff = by_obs["Pleural Effusion"]
  assert text[eff.span[0] : eff.span[1]] == eff.phrase == "effusion"
  assert eff.sentence == "Small right pleural effusion."
  assert (eff.status, eff.value, eff.regions) == ("positive", 1.0, ("right costophrenic angle",))
  pna = by_obs["Pneumonia"]
  assert (pna.status, pna.value) == ("uncertain", -1.0)
  assert by_obs["Cardiomegaly"].status == "negative" and by_obs["Cardiomegaly"].value == 0.0
  # whole words: the list phrase "atelecta" is reported as the word of the report
  assert labeler.label("Mild atelectasis.").mentions[0].phrase == "atelectasis"


def test_label_many_matches_label(labeler):
  texts = ["No effusion.", "", "Cardiomegaly with small bilateral effusions.", None]
  arr = labeler.label_many(texts)
  assert arr.shape == (4, 14) and arr.dtype == np.float32
  for row, text in zip(arr, texts, strict=True):
    np.testing.assert_array_equal(row, labeler.label(text).labels)
  assert labeler.label_many([]).shape == (0, 14)


# --------------------------------------------------------------------------------------------------
# Real reports
# --------------------------------------------------------------------------------------------------


def test_chexpert_sample_agreement(labeler):
  """Agreement with the CheXpert labeler's own output on its example reports."""
  root = SHARED / "labelers" / "chexpert"
  if not (root / "labeled_reports_example.csv").is_file():
    pytest.skip("CheXpert example output not found")
  with open(root / "labeled_reports_example.csv", newline="") as fh:
    rows = list(csv.reader(fh))
  header, rows = rows[0], rows[1:]
  with open(root / "sample_reports.csv", newline="") as fh:
    samples = [r[0] for r in csv.reader(fh) if r]
  assert [r[0] for r in rows] == samples
  obs_cols = [header.index(o) for o in CHEXPERT_OBSERVATIONS]
  agree = total = agree_all = 0
  mismatches = []
  for row in rows:
    got = labeler.label(row[0]).labels
    for k, col in enumerate(obs_cols):
      want = float(row[col]) if row[col].strip() else NAN
      ok = same(float(got[k]), want)
      agree_all += ok
      if not math.isnan(want):
        total += 1
        agree += ok
      if not ok:
        mismatches.append((row[0][:40], CHEXPERT_OBSERVATIONS[k], float(got[k]), want))
  print(
    f"CheXpert sample: {agree}/{total} non-blank cells, {agree_all}/{len(rows) * 14} cells; "
    f"{mismatches}"
  )
  assert total >= 10
  assert agree / total >= 0.9, mismatches
  assert agree_all / (len(rows) * 14) >= 0.9, mismatches


def test_iu_reports_are_labeled_consistently(labeler):
  """On real OpenI reports: valid values, valid region names, spans that point at the phrase."""
  path = SHARED / "iu_xray" / "reports_openi.csv"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  with open(path, newline="", encoding="utf-8") as fh:
    rows = list(itertools.islice(csv.DictReader(fh), 400))
  regions = set(CHEST_IMAGENOME_REGIONS)
  n_mentions = 0
  for row in rows:
    text = f"{row['findings']} {row['impression']}"
    res = labeler.label(text)
    vals = res.labels[~np.isnan(res.labels)]
    assert set(vals.tolist()) <= {-1.0, 0.0, 1.0}
    for m in res.mentions:
      n_mentions += 1
      assert m.observation in CHEXPERT_OBSERVATIONS
      assert m.status in L.STATUS_VALUES
      assert text[m.span[0] : m.span[1]] == m.phrase and m.phrase in m.sentence
      assert set(m.regions) <= regions
      assert list(m.regions) == sorted(m.regions, key=CHEST_IMAGENOME_REGIONS.index)
    for obs, regs in res.finding_regions().items():
      assert obs != "No Finding" and set(regs) <= regions
  assert n_mentions > 1000
