"""Phrase grounding (jimte/evaluate/grounding.py): the metrics' reference values, finding the
phrase's words in the tokenised report, and an exact grounder scoring what the grid allows."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from data_pipeline import phantoms
from data_pipeline.tokenizer import Tokenizer
from jimte.data import DataBundle
from jimte.evaluate import grounding, maps, registry
from tests._tiny import tiny_config


# ------------------------------------------------------------------------------------ metrics
def test_metrics_reference_values():
  inside = np.zeros((4, 4), bool)
  inside[:2, :2] = True
  heat = np.array(
    [[4.0, 2.0, 0.0, 0.0], [2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
  )
  assert grounding.pointing_hit(heat, inside) == 1.0
  assert grounding.pointing_hit(-heat, inside) == 0.0  # its maximum (0) first at (0, 2): outside
  # inside: [4, 2, 2, 0] mean 2, var 2; outside: twelve values, two of them 1: mean 1/6,
  # var 1/6 - 1/36 = 5/36.
  expected = (2 - 1 / 6) / np.sqrt(2 + 5 / 36)
  assert grounding.contrast_to_noise(heat, inside) == pytest.approx(expected)
  assert grounding.contrast_to_noise(3 * heat + 7, inside) == pytest.approx(expected)  # affine
  # Min-max scaled: 1, .5, .5, 0 inside; .25 at two outside pixels. t=0.1: the 5 non-zero pixels
  # (3 inside) vs 4 inside -> IoU 3/6; t=0.3: 3 pixels, all inside -> 3/4; t=0.6: 1/4.
  assert grounding.mean_iou(heat, inside, (0.1, 0.3, 0.6)) == pytest.approx((0.5 + 0.75 + 0.25) / 3)
  assert grounding.contrast_to_noise(np.ones((4, 4)), inside) == 0.0


def test_box_mask_and_grid_upsampling_place_cells_where_they_are():
  mask = maps.box_mask([(0.0, 0.5, 0.25, 1.0)], 8, 8)  # rows 0-1, columns 4-7
  assert mask.sum() == 8 and mask[:2, 4:].all()
  grid = np.zeros((2, 2))
  grid[0, 1] = 1.0  # the top-right cell: its centre lies between pixels 5 and 6 of 8
  up = maps.grid_to_pixels(grid, 8, 8)
  assert up.shape == (8, 8) and up[:2, 6:].min() == 1.0 and up[6:, :2].max() == 0.0
  # Along a row: bilinear between the cell centres, the edge value beyond them.
  np.testing.assert_allclose(up[0], [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1])


# ---------------------------------------------------------------------- phrases in the report
def test_phrase_slots_take_the_occurrence_at_the_offset():
  pieces = ["\u2581no", "\u2581eff", "usion", ".", "\u2581small", "\u2581eff", "usion", "</s>"]
  valid = np.ones(len(pieces), bool)
  words = grounding.report_words(pieces, valid)
  assert [w for w, _ in words] == ["no", "effusion", "small", "effusion", ""]
  text = "No effusion. Small effusion"
  assert grounding.phrase_slots(words, text, "effusion", text.index("effusion")) == (1, 2, 3)
  assert grounding.phrase_slots(words, text, "effusion", text.rindex("effusion")) == (5, 6)
  assert grounding.phrase_slots(words, text, "small effusion", 13) == (4, 5, 6)
  truncated = grounding.report_words(pieces[:4], valid[:4])
  assert grounding.phrase_slots(truncated, text, "effusion", text.rindex("effusion")) is None


@pytest.fixture(scope="module")
def phantom_split():
  config = phantoms.PhantomConfig(image_size=64, abnormal_probability=1.0)
  split = phantoms.generate_split(40, split="test", seed=3, config=config)
  reports = phantoms.generate_split(300, split="train", seed=3, config=config)["text"]
  tokenizer = Tokenizer.train(list(reports), max_len=160, vocab_size=500, num_threads=1)
  return split, tokenizer


def _encoded_text(split, tokenizer):
  tokens = tokenizer.encode(list(split["text"]))
  return {
    "index": np.arange(len(tokens)),
    "tokens": tokens,
    "word_mask": tokens[:, 1:] != 0,
  }


def test_every_finding_phrase_is_found_and_its_pieces_spell_the_term(phantom_split):
  split, tokenizer = phantom_split
  encoded = _encoded_text(split, tokenizer)
  phrases, skipped = grounding.finding_phrases(
    encoded, tokenizer, list(split["text"]), list(split["findings"])
  )
  groups = sum(len({r["group"] for r in f}) for f in split["findings"])
  assert len(phrases) == groups and not skipped
  for phrase in phrases:
    pieces = [
      tokenizer.id_to_piece(int(encoded["tokens"][phrase.row][s + 1])) for s in phrase.slots
    ]
    spelled = "".join(pieces).replace("\u2581", " ").strip().lower()
    assert grounding._clean(spelled) == grounding._clean(phrase.term), (spelled, phrase.term)
  # Cut at 24 tokens, the later phrases are gone, each counted.
  short = Tokenizer(tokenizer.model_proto, max_len=24)
  cut, skipped = grounding.finding_phrases(
    _encoded_text(split, short), short, list(split["text"]), list(split["findings"])
  )
  assert len(cut) + skipped["phrase not in the tokenised report"] == groups and skipped


def _exact_grounder(split, tokenizer, grid: int, dim: int = 48):
  """Encodings where each phrase's word vectors equal the region vectors of the cells its boxes
  cover most (one random direction per phrase); other regions and words random."""
  rng = np.random.default_rng(0)

  def vectors(*shape):  # norm 5: the attention's raw dot products are then 25 where they agree
    x = rng.normal(size=(*shape, dim)).astype(np.float32)
    return 5 * x / np.linalg.norm(x, axis=-1, keepdims=True)

  encoded = _encoded_text(split, tokenizer)
  n, length = encoded["tokens"].shape
  regions = vectors(n, grid, grid)
  words = vectors(n, length - 1)
  phrases, _ = grounding.finding_phrases(
    encoded, tokenizer, list(split["text"]), list(split["findings"])
  )
  size = 64
  for phrase in phrases:
    direction = vectors()
    cover = maps.box_mask(phrase.boxes, size, size).reshape(grid, size // grid, grid, -1)
    cover = cover.mean((1, 3))
    regions[phrase.row][cover >= cover.max() - 1e-9] = direction
    words[phrase.row, list(phrase.slots)] = direction
  encoded.update(regions=regions, words=words)
  return encoded, phrases


def test_an_exact_grounder_scores_the_grids_ceiling_and_random_maps_chance(phantom_split):
  split, tokenizer = phantom_split
  encoded, phrases = _exact_grounder(split, tokenizer, grid=16)
  texts, findings = list(split["text"]), list(split["findings"])
  out = grounding.evaluate(encoded, tokenizer, texts, findings, image_size=64, gamma1=4.0)
  assert out["num_phrases"] == len(phrases)
  assert out["oracle/pointing_game"] >= 0.85  # a 16 x 16 grid holds nearly every box
  # Two phrases of one report may share their best cells (the later one keeps them), and a thin
  # box (a catheter) may cover a quarter of several cells whose centres all miss it. The attention
  # normalises over the report's words first, so a phrase of several pieces splits a cell's
  # weight among them, and a random cell where one of its pieces outscores the other words can
  # outbid it: it sits a little below the similarity map.
  assert out["similarity/pointing_game"] >= out["oracle/pointing_game"] - 0.1
  assert out["attention/pointing_game"] >= 0.8
  for kind in grounding.MAP_KINDS:
    assert out[f"{kind}/cnr"] > 1.0
  rng = np.random.default_rng(1)
  encoded["regions"] = rng.normal(size=encoded["regions"].shape).astype(np.float32) * 0.7
  noise = grounding.evaluate(encoded, tokenizer, texts, findings, image_size=64, gamma1=4.0)
  n = out["num_phrases"]
  chance = noise["chance_pointing_game"]
  assert 0.0 < chance < 0.3
  for kind in grounding.MAP_KINDS:
    assert noise[f"{kind}/pointing_game"] <= chance + 5 * np.sqrt(chance * (1 - chance) / n)
    assert noise[f"{kind}/cnr"] < 0.6


def test_a_coarse_grid_caps_the_pointing_game_below_one(phantom_split):
  """At 4 x 4 cells small boxes (nodules, devices) hold no cell centre: the oracle says so."""
  split, tokenizer = phantom_split
  encoded, _ = _exact_grounder(split, tokenizer, grid=4)
  out = grounding.evaluate(
    encoded, tokenizer, list(split["text"]), list(split["findings"]), image_size=64, gamma1=4.0
  )
  assert out["oracle/pointing_game"] < 0.7
  assert out["similarity/pointing_game"] <= out["oracle/pointing_game"] + 1e-9


# ---------------------------------------------------------------------------------- evaluator
def test_grounding_evaluator_settings_and_missing_boxes_name_their_key(tmp_path, phantom_split):
  split, tokenizer = phantom_split
  config = tiny_config()
  for setting, key in (
    (dict(maps=("heat",)), "maps"),
    (dict(thresholds=(0.5, 2.0)), "thresholds"),
    (dict(untrained_baseline="yes"), "untrained_baseline"),
  ):
    config.evals = ml_collections.ConfigDict({"g": dict(type="grounding", split="test", **setting)})
    with pytest.raises(ValueError, match=rf"config\.evals\.g\.{key}"):
      registry.build_evaluators(config)
  config.evals = ml_collections.ConfigDict(
    {"g": dict(type="grounding", split="test"), "s": dict(type="grounding", split="test")}
  )
  config.evals.s.skip_without_boxes = True
  strict, lenient = registry.build_evaluators(config)
  data = DataBundle(
    config=config, sources={}, tokenizer=tokenizer, tokenizer_dir=str(tmp_path), ground_truth={}
  )
  with pytest.raises(ValueError, match=r"config\.evals\.g: split 'test' has no ground-truth"):
    strict.check(data)
  lenient.check(data)
  assert lenient({}, data=data, workdir=str(tmp_path)) == {}


# ------------------------------------------------------------- benchmarks/grounding_diagnosis.py
def test_diagnosis_readings_find_what_is_planted_and_nothing_in_noise():
  """The diagnosis's pieces: AUC by hand; a probe finds a planted label direction (AUC 1) and not
  a random label (near 0.5); the text-free anomaly map points at the one cell that differs from
  the others' images, the pointing game counting it; the word softmax sums to one."""
  from benchmarks import grounding_diagnosis as diagnosis

  assert diagnosis.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
  rng = np.random.default_rng(0)
  labels = rng.random(300) < 0.3
  features = rng.standard_normal((300, 16))
  planted = features.copy()
  planted[:, 3] += 3.0 * labels
  assert diagnosis.probe_auc(planted, labels) > 0.95
  assert abs(diagnosis.probe_auc(features, labels) - 0.5) < 0.15

  regions = rng.standard_normal((40, 8, 8, 4)) * 0.1
  rows, cells = np.arange(40), rng.integers(0, 64, size=40)
  regions.reshape(40, 64, 4)[rows, cells] += 5.0  # each image's finding: one cell stands out
  anomaly = diagnosis.anomaly_maps(regions).reshape(40, 64)
  assert (anomaly.argmax(1) == cells).all()
  phrases = [
    grounding.Phrase(
      int(i),
      "nodule",
      "nodule",
      (0,),
      ((c // 8 / 8, c % 8 / 8, (c // 8 + 1) / 8, (c % 8 + 1) / 8),),
    )
    for i, c in zip(rows, cells, strict=True)
  ]
  games = diagnosis.pointing_games(
    {"anomaly": lambda i: anomaly[i].reshape(8, 8), "flat": lambda i: np.zeros((8, 8))}, phrases, 64
  )
  assert games["anomaly"] == {"all": 1.0, "nodule": 1.0}
  assert games["flat"]["all"] < 0.1  # a constant map's first maximum: the top-left pixel

  q = diagnosis.word_softmax(
    rng.standard_normal((5, 4)), rng.standard_normal((7, 4)), np.arange(7) < 5
  )
  assert q.shape == (5, 5)
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-6)


def test_supervised_cam_reference_runs_and_reports_per_kind(capsys):
  """benchmarks/grounding_supervised_cam.py on the tiny config: targets and phrases from the
  ground truth (one phrase per finding group, a target per kind present), then a few updates
  and its printed AUCs and CAM pointing game, each in [0, 1], with the grid's ceiling."""
  import re

  from benchmarks import grounding_supervised_cam as reference
  from data_pipeline.phantoms.config import FINDING_INDEX

  findings = [
    [{"finding_id": 0, "group": 0, "name": "nodule", "box": (0.1, 0.1, 0.2, 0.2)}],
    [],
    [
      {"finding_id": 2, "group": 0, "name": "pleural_effusion", "box": (0.6, 0.1, 0.8, 0.4)},
      {"finding_id": 2, "group": 0, "name": "pleural_effusion", "box": (0.6, 0.6, 0.8, 0.9)},
      {"finding_id": 4, "group": 1, "name": "cardiomegaly", "box": (0.4, 0.3, 0.7, 0.7)},
    ],
  ]
  targets = reference.finding_targets(findings, len(FINDING_INDEX))
  assert targets.sum(1).tolist() == [1.0, 0.0, 2.0] and targets[2, 2] == targets[2, 4] == 1.0
  phrases = reference.finding_phrases(findings)
  assert [(p.row, p.finding, len(p.boxes)) for p in phrases] == [
    (0, "nodule", 1),
    (2, "pleural_effusion", 2),
    (2, "cardiomegaly", 1),
  ]
  reference.main(
    [
      "--config_arg",
      "tiny",
      "--steps",
      "3",
      "--num_train",
      "32",
      "--num_eval",
      "16",
      "--batch_size",
      "8",
    ]  # fmt: skip
  )
  out = capsys.readouterr().out
  game = re.search(r"CAM pointing game on the (\d+)x\1 grid: ([\d.]+) .*\(ceiling ([\d.]+)\)", out)
  assert game and 0 <= float(game.group(2)) <= 1 and 0 < float(game.group(3)) <= 1
  aucs = [
    float(v) for v in re.findall(r" (\d\.\d\d)", out.split("AUC per kind:")[1].splitlines()[0])
  ]
  assert aucs and all(0 <= a <= 1 for a in aucs)
