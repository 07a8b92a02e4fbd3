"""Classification on image embeddings: our AUROC against scikit-learn's, the linear probe on
separable and on shuffled problems, the low-data subsets, the prompt sets and zero-shot scores,
fine-tuning a tiny image tower, and the `jimte classify` command on a tiny trained work dir."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from data_pipeline.names import CHEXPERT_INDEX, CHEXPERT_OBSERVATIONS
from jimte import classify, finetune
from jimte.evaluate import classification as cl
from jimte.evaluate import zero_shot as zs
from jimte.models.joimternet import build_model, init_variables
from tests._tiny import tiny_config

# ------------------------------------------------------------------------------------------ AUROC


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_on_random_scores(seed):
  rng = np.random.default_rng(seed)
  targets = rng.integers(0, 2, 500)
  scores = rng.normal(size=500) + 0.7 * targets
  assert cl.auroc(targets, scores) == pytest.approx(roc_auc_score(targets, scores), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  targets = rng.integers(0, 2, 300)
  scores = rng.integers(0, 4, 300).astype(np.float32)  # heavy ties within and across classes
  assert cl.auroc(targets, scores) == pytest.approx(roc_auc_score(targets, scores), abs=1e-6)


def test_auroc_reference_values():
  assert cl.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
  assert cl.auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
  assert cl.auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
  assert cl.auroc([0, 1, 0, 1], [1, 2, 2, 3]) == pytest.approx(7 / 8)


def test_auroc_with_one_class_is_an_error_and_a_table_gives_nan():
  with pytest.raises(ValueError, match="only one class"):
    cl.auroc([1, 1, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="0 or 1"):
    cl.auroc([0, 2], [0.1, 0.2])
  targets = np.array([[1, 0], [1, 1], [1, 0]], np.float32)
  table = cl.per_class_auroc(targets, np.array([[0.1, 0.2], [0.2, 0.9], [0.3, 0.1]]), names="ab")
  assert math.isnan(table.auroc[0]) and table.notes[0] == "no negatives"
  assert table.auroc[1] == 1.0
  assert table.as_dict()["per_class"]["a"]["auroc"] is None


def test_targets_mask_uncertain_and_mean_leaves_out_no_finding():
  labels = np.array([[1, np.nan, -1, 0]], np.float32)
  targets, mask = cl.targets_from_labels(labels)
  np.testing.assert_array_equal(targets, [[1, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[True, True, False, True]])
  with pytest.raises(ValueError, match="1, 0, -1 or nan"):
    cl.targets_from_labels(np.array([[0.5]]))
  names = ("No Finding", "Edema", "Fracture")
  assert cl.mean_without_no_finding(names, np.array([0.0, 0.6, np.nan])) == pytest.approx(0.6)


# ------------------------------------------------------------------------------------- the probe


def _separable(n, d=12, c=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x @ rng.normal(size=(d, c)) > 0.3).astype(np.float32)
  return x, y, np.ones_like(y, bool)


@pytest.mark.parametrize("balanced", [False, True])
def test_probe_recovers_a_linearly_separable_problem(balanced):
  x, y, m = _separable(900)
  probe = cl.fit_linear_probe(
    x[:500], y[:500], m[:500], x[500:600], y[500:600], m[500:600], class_balanced=balanced
  )
  table = cl.per_class_auroc(y[600:], probe.logits(x[600:]), names="abc")
  assert np.all(table.auroc > 0.98), table.auroc
  assert set(probe.l2) <= set(cl.L2_GRID)


def test_probe_is_at_chance_on_shuffled_labels():
  """Labels shuffled over all rows are independent of the features: held-out AUROC ~ 0.5."""
  x, y, m = _separable(3000, seed=1)
  y = np.random.default_rng(2).permutation(y)
  probe = cl.fit_linear_probe(x[:1000], y[:1000], m[:1000], x[1000:1500], y[1000:1500], m[:500])
  table = cl.per_class_auroc(y[1500:], probe.logits(x[1500:]), names="abc")
  assert np.all(np.abs(table.auroc - 0.5) < 0.05), table.auroc


# ------------------------------------------------------------------------------ low-data subsets


def test_low_data_subsets_are_deterministic_nested_and_of_the_right_size():
  rng = np.random.default_rng(0)
  targets = (rng.random((1000, 3)) < [0.3, 0.2, 0.0]).astype(np.float32)
  targets[[10, 500, 900], 2] = 1.0  # class c: 3 positives in the whole split
  names = ("a", "b", "c")
  full = cl.low_data_subset(targets, 1.0, names=names)
  assert len(full.indices) == 1000 and full.added == {}
  ten = cl.low_data_subset(targets, 0.1, names=names)
  again = cl.low_data_subset(targets, 0.1, names=names)
  np.testing.assert_array_equal(ten.indices, again.indices)
  assert ten.target_size == 100
  one = cl.low_data_subset(targets, 0.01, names=names, min_positives=2)
  assert one.target_size == 10
  assert len(one.indices) == 10 + sum(one.added.values())
  assert np.all(targets[one.indices].sum(0) >= 2)  # the minimum met for every class
  assert set(one.indices) - set(ten.indices) <= set(np.flatnonzero(targets.any(1)))
  other_seed = cl.low_data_subset(targets, 0.1, names=names, seed=1)
  assert not np.array_equal(other_seed.indices, ten.indices)
  few = cl.low_data_subset(targets, 0.01, names=names, min_positives=5)
  assert few.short == {"c": 3} and targets[few.indices, 2].sum() == 3
  with pytest.raises(ValueError, match="fraction"):
    cl.low_data_subset(targets, 0.0)


# -------------------------------------------------------------------------- prompts, zero-shot


def test_prompt_file_loads_and_bad_prompts_name_the_key(tmp_path):
  prompts = zs.load_prompts()
  assert prompts.labels == CHEXPERT_OBSERVATIONS  # every label, CheXpert order
  assert all(prompts.positive) and all(prompts.negative)
  bad = tmp_path / "p.json"
  bad.write_text(json.dumps({"Edema": {"positive": ["Edema."], "negative": []}}))
  with pytest.raises(ValueError, match=r"p.json: Edema.negative"):
    zs.load_prompts(str(bad))
  bad.write_text(json.dumps({"Edemaa": {"positive": ["x"], "negative": ["y"]}}))
  with pytest.raises(ValueError, match="unknown label 'Edemaa'"):
    zs.load_prompts(str(bad))
  with pytest.raises(FileNotFoundError, match="nowhere.py"):
    zs.load_prompts(str(tmp_path / "nowhere.py"))


def test_zero_shot_scores_follow_the_prompt_similarities():
  """Text vectors: positive prompts along e0, negative ones along e1; images tilted to either."""
  prompts = zs.prompts_from_mapping(
    {"Edema": {"positive": ["p1", "p2"], "negative": ["n1"]}}, source="test"
  )
  table = {"p1": [1.0, 0.0, 0.0], "p2": [0.8, 0.6, 0.0], "n1": [0.0, 1.0, 0.0]}
  encode = lambda texts: np.array([table[t] for t in texts], np.float32)
  images = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
  s_pos, s_neg = zs.prompt_similarities(images, prompts, encode)
  np.testing.assert_allclose(s_pos[:, 0], [0.9, 0.3], atol=1e-6)
  np.testing.assert_allclose(s_neg[:, 0], [0.0, 1.0], atol=1e-6)
  scores = zs.zero_shot_scores(s_pos, s_neg, gamma=10.0)
  s_pos, s_neg = s_pos.astype(np.float64), s_neg.astype(np.float64)
  softmax = np.exp(10 * s_pos) / (np.exp(10 * s_pos) + np.exp(10 * s_neg))
  np.testing.assert_allclose(scores, softmax, rtol=1e-9)


# ------------------------------------------------------------------------------------ fine-tuning


def test_finetuning_reduces_the_training_loss_of_a_tiny_tower():
  c = tiny_config()
  c.model.text.vocab_size = 64
  model = build_model(c.model)
  variables = init_variables(model, jax.random.key(0), 32, 8)
  tower_vars = {"params": variables["params"]["image"], "batch_stats": variables["batch_stats"]}
  tower_vars["batch_stats"] = tower_vars["batch_stats"]["image"]
  config = finetune.default_config()
  config.update(batch_size=8, dropout=0.0, learning_rate=3e-3, backbone_learning_rate=3e-3)
  clf, init = finetune.init_classifier(model.image, tower_vars, 14, 32, config)
  # The pre-trained tower is what the classifier starts from.
  jax.tree.map(np.testing.assert_array_equal, init["params"]["image"], variables["params"]["image"])
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (16, 32, 32, 1)).astype(np.float32)
  labels = np.full((16, 14), np.nan, np.float32)
  labels[:, CHEXPERT_INDEX["Edema"]] = images.mean((1, 2, 3)) > np.median(images.mean((1, 2, 3)))
  labels[:8, CHEXPERT_INDEX["No Finding"]] = 1.0
  labels[0, CHEXPERT_INDEX["Atelectasis"]] = -1.0  # uncertain: masked

  def batches():
    while True:
      for i in (0, 8):
        yield {"image": images[i : i + 8], "labels": labels[i : i + 8], "valid": np.ones(8, bool)}

  targets, mask = cl.targets_from_labels(labels)
  pos_weight, class_weight = finetune.loss_weights(targets, mask, 5.0, CHEXPERT_INDEX["No Finding"])
  assert pos_weight[CHEXPERT_INDEX["Edema"]] == pytest.approx(1.0)  # 8 No Finding / 8 Edema
  trainer = finetune.Finetuner(
    clf, init, config, steps_per_epoch=2, pos_weight=pos_weight, class_weight=class_weight
  )
  losses = trainer.train_steps(batches(), 24)
  assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:2]), losses
  probs = trainer.predict([images[:8], images[8:]])
  assert probs.shape == (16, 14) and np.all((probs > 0) & (probs < 1))


# ------------------------------------------------------------------------------------ the command


def test_synthetic_exact_labels_come_from_the_ground_truth():
  findings = [
    [],
    [{"name": "support_device", "chexpert": "Support Devices"}],
    [{"name": "edema", "chexpert": "Edema"}, {"name": "nodule", "chexpert": "Lung Lesion"}],
  ]
  labels = classify.synthetic_exact_labels(findings)
  i = CHEXPERT_INDEX
  assert labels[0, i["No Finding"]] == 1 and labels[1, i["No Finding"]] == 1
  assert labels[1, i["Support Devices"]] == 1 and labels[2, i["No Finding"]] == 0
  assert labels[2, i["Edema"]] == 1 and labels[2, i["Lung Lesion"]] == 1
  assert labels[0, i["Edema"]] == 0
  assert np.isnan(labels[:, i["Fracture"]]).all()  # never drawn: not scored


def test_bad_fractions_are_a_usage_error(capsys):
  with pytest.raises(SystemExit):
    classify.parse_args(["--workdir", "w", "--fractions", "0.5,2"])
  assert "--fractions" in capsys.readouterr().err


def test_tfds_splits_are_labelled_by_the_report_labeler_and_subsets_carry_labels(tmp_path):
  from data_pipeline.builders.synthetic_cxr import Builder, SyntheticCxrConfig
  from data_pipeline.labels import ReportLabeler

  config = SyntheticCxrConfig(name="tiny", n_train=6, n_validation=3, n_test=3, image_size=32)
  Builder(data_dir=str(tmp_path), config=config).download_and_prepare()
  args = classify.parse_args(
    ["--workdir", "w", "--dataset", "synthetic_cxr", "--tfds_data_dir", str(tmp_path)]
    + ["--tfds_config", "tiny"]
  )
  splits, source = classify.load_splits(args, config=None)
  assert "report labeler" in source
  assert {k: s.num_examples for k, s in splits.items()} == {"train": 6, "validation": 3, "test": 3}
  train = splits["train"]
  texts = [e["text"].decode() for e in train.source.as_dataset().as_numpy_iterator()]
  np.testing.assert_array_equal(train.labels, ReportLabeler().label_many(texts))
  rows = list(classify.subset_source(train, np.array([1, 4])).as_dataset().as_numpy_iterator())
  assert [r["text"].decode() for r in rows] == [texts[1], texts[4]]
  np.testing.assert_array_equal(np.stack([r["labels"] for r in rows]), train.labels[[1, 4]])


# -------------------------------------------------------- end to end on a tiny trained work dir


def _report(out, dataset, mode):
  return json.loads((out / f"{dataset}_{mode}.json").read_text())


def test_zero_shot_on_a_tiny_trained_model_gives_per_label_auroc(trained_workdir, tmp_path):
  argv = ["--workdir", str(trained_workdir), "--mode", "zero_shot", "--out", str(tmp_path)]
  assert classify.main([*argv, "--num_train", "8", "--num_eval", "32"]) == 0
  report = _report(tmp_path, "synthetic", "zero_shot")
  table = report["results"]["zero_shot"]["table"]
  assert list(table["per_class"]) == list(CHEXPERT_OBSERVATIONS)
  scored = {k: v["auroc"] for k, v in table["per_class"].items() if v["auroc"] is not None}
  assert scored and all(0.0 <= a <= 1.0 for a in scored.values())
  never_drawn = ("Fracture", "Pleural Other", "Pneumonia")
  assert all(table["per_class"][k]["auroc"] is None for k in never_drawn)
  kept = [a for k, a in scored.items() if k != "No Finding"]
  assert table["mean_auroc_without_no_finding"] == pytest.approx(np.mean(kept))
  assert "| **mean without No Finding** |" in (tmp_path / "synthetic_zero_shot.md").read_text()


def test_probe_command_on_a_tiny_trained_model(trained_workdir, tmp_path):
  argv = ["--workdir", str(trained_workdir), "--mode", "probe", "--out", str(tmp_path)]
  assert (
    classify.main([*argv, "--num_train", "40", "--num_eval", "24", "--fractions", "1,0.1"]) == 0
  )
  results = _report(tmp_path, "synthetic", "probe")["results"]
  assert results["1"]["subset"]["size"] == 40
  small = results["0.1"]["subset"]
  assert small["target_size"] == 4
  assert small["size"] == 4 + sum(small["added_for_min_positives"].values())
  for column in results.values():
    assert set(column["l2"].values()) <= set(cl.L2_GRID)
