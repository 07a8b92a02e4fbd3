"""End-to-end trainer behaviour on a tiny synthetic run: the loss falls, an epoch is a pass of
image-text steps, config overrides reject unknown keys, and the evaluators of `config.evals` run
on their own splits at their own cadence. Also the step dispatcher (`jimte.steps.TrainSteps`).
Checkpoints, resume and NaN: test_train_resume.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jimte import data as data_lib
from jimte import steps, train
from jimte.evaluate import encode
from tests._tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_learns_the_pairing(tmp_path):
  """On 16 fixed pairs the image-text objective leaves chance level (log 8 per CE direction)."""
  c = tiny_config(
    **{
      "data.num_train": 16,
      "data.augment": False,
      "total_steps": 120,
      "optim.learning_rate": 1e-3,
      "optim.schedule": "constant",
      "checkpoint_every_steps": 1000,
      "log_every_steps": 10,
    }
  )
  train.train_and_evaluate(c, str(tmp_path), progress=False)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  ce = [r["train/sentence_ce_i2t"] for r in rows if "train/sentence_ce_i2t" in r]
  assert len(ce) >= 10
  assert np.mean(ce[-3:]) < 0.7 * np.log(8), ce
  assert (tmp_path / "attention.png").exists()
  final = json.loads((tmp_path / "final_metrics.json").read_text())
  assert "eval/retrieval/global/i2t_R@10" in final and "eval/retrieval/chance_R@10" in final


def _spy_on_streams(monkeypatch) -> dict[str, list[np.ndarray]]:
  """Records the example indices of every batch each stream hands the loop (passing them on)."""
  seen = {"itm": [], "mlm": []}
  originals = {"itm": data_lib.DataBundle.train_batches, "mlm": data_lib.DataBundle.mlm_batches}

  def spy(kind):
    def batches(self, mesh, start_step=0):
      for batch in originals[kind](self, mesh, start_step=start_step):
        seen[kind].append(np.asarray(batch["index"]))
        yield batch

    return batches

  monkeypatch.setattr(data_lib.DataBundle, "train_batches", spy("itm"))
  monkeypatch.setattr(data_lib.DataBundle, "mlm_batches", spy("mlm"))
  return seen


def test_with_mlm_an_epoch_is_a_pass_of_itm_steps_over_the_pairs(tmp_path, monkeypatch):
  """MLM on (p = 0.3): one epoch = pairs / batch ITM steps, each pair once; MLM steps on top, from
  the reports stream of their own."""
  seen = _spy_on_streams(monkeypatch)
  c = tiny_config(**{"num_epochs": 1.0, "loss.mixture": True, "evals": {}})
  _, state = train.train_and_evaluate(c, str(tmp_path), progress=False)
  itm_steps = c.data.num_train // c.batch_size  # 64 / 8
  kinds = steps.step_kinds(c.seed, 0, int(state.step), c.loss)
  assert int(state.itm_step) == itm_steps == int(kinds.sum())
  assert (
    int(state.step) == steps.updates_for_itm_steps(c.seed, 0, itm_steps, c.loss) > 2 * itm_steps
  )
  assert kinds[-1]  # the run ends on its last ITM step
  # The loop took one ITM batch per ITM step (prefetch reads at most 2 ahead), every pair once.
  itm = np.concatenate(seen["itm"][:itm_steps])
  assert sorted(itm.tolist()) == list(range(c.data.num_train))
  assert len(seen["mlm"]) >= int(state.step) - itm_steps
  mlm = np.concatenate(seen["mlm"][: int(state.step) - itm_steps])
  epochs = len(mlm) // c.data.num_train  # the MLM stream makes its own passes over the reports
  assert epochs >= 2
  for e in range(epochs):
    assert sorted(mlm[e * 64 : (e + 1) * 64].tolist()) == list(range(64))
  assert not np.array_equal(mlm[:64], itm)  # its own order
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  last = [r for r in rows if "train/epoch" in r][-1]
  assert last["train/epoch"] == 1.0 and last["step"] == int(state.step)
  assert any("train/mlm_loss" in r for r in rows) and any("train/itm_loss" in r for r in rows)


def test_step_kinds_follow_the_mixture_and_do_not_depend_on_where_they_are_read():
  c = tiny_config(**{"loss.mixture": True})
  kinds = steps.step_kinds(c.seed, 0, 20000, c.loss)
  assert abs(kinds.mean() - 0.3) < 0.015
  np.testing.assert_array_equal(steps.step_kinds(c.seed, 1234, 50, c.loss), kinds[1234:1284])
  assert [steps.step_kind(c.seed, u, c.loss) for u in range(5)] == [
    "itm" if k else "mlm" for k in kinds[:5]
  ]
  assert not np.array_equal(steps.step_kinds(c.seed + 1, 0, 200, c.loss), kinds[:200])
  first = int(np.argmax(kinds))  # updates to complete k ITM steps end on the k-th ITM update
  assert steps.updates_for_itm_steps(c.seed, 0, 1, c.loss) == first + 1
  assert (
    steps.updates_for_itm_steps(c.seed, 0, 5000, c.loss)
    == np.searchsorted(np.cumsum(kinds), 5000) + 1
  )
  c.loss.mixture = False
  assert steps.updates_for_itm_steps(c.seed, 7, 12, c.loss) == 12
  assert steps.step_kinds(c.seed, 0, 10, c.loss).all()


def test_unknown_config_override_is_an_error_naming_the_key(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jimte.main",
      "--config",
      "configs/default.py:runlocal",
      "--workdir",
      str(tmp_path),
      "--config.loss.gama1=3",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "gama1" in proc.stderr


def test_the_noevals_argument_drops_every_evaluator_and_nothing_else():
  from configs import default

  tiny, bare = default.get_config("tiny"), default.get_config("tiny,noevals")
  assert set(tiny.evals) >= {"retrieval", "grounding", "attention_png"} and not bare.evals
  assert tiny.to_dict() == {**bare.to_dict(), "evals": tiny.evals.to_dict()}
  with pytest.raises(KeyError, match="noeval"):
    default.get_config("tiny,noeval")


def test_periodic_evaluation_keeps_the_best_checkpoint(tmp_path):
  c = tiny_config(
    **{
      "total_steps": 12,
      "evals.retrieval.every_steps": 3,
      "checkpoint_every_steps": 100,
      "keep_checkpoints": 1,
      "keep_best_checkpoints": 1,
      "best_metric": "eval/retrieval/global/i2t_median_rank",
      "best_mode": "min",
    }
  )
  train.train_and_evaluate(c, str(tmp_path), progress=False)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  ranks = {
    r["step"]: r["eval/retrieval/global/i2t_median_rank"]
    for r in rows
    if "eval/retrieval/global/i2t_median_rank" in r and r["step"] < 12
  }
  assert sorted(ranks) == [3, 6, 9]
  from jimte import checkpointing

  kept = checkpointing.Checkpointer(str(tmp_path / "checkpoints")).all_steps()
  assert 12 in kept  # the latest
  best = [s for s in kept if s != 12]
  assert len(best) == 1 and ranks[best[0]] == min(ranks.values())  # and the best evaluated one


def test_train_steps_compile_once_per_kind_and_batch_shape_and_record_flops():
  calls = []

  def double(state, batch):
    calls.append(1)
    return state @ batch, {"train/loss": state[0, 0]}

  train_steps = steps.TrainSteps({"double": jax.jit(double)}, kind_of=lambda step: "double")
  x = jnp.ones((8, 8))
  y, _ = train_steps(0, x, x)
  train_steps(1, y, x)
  assert len(calls) == 1  # traced once
  assert train_steps.flops["double"] == pytest.approx(2 * 8**3, rel=0.05)
  assert train_steps.take_flops() == pytest.approx(2 * train_steps.flops["double"])
  assert train_steps.take_flops() == 0.0
  # Another batch shape (another text-length bucket) compiles once more; the first stays cached.
  y, _ = train_steps(2, jnp.ones((8, 4)), jnp.ones((4, 4)))
  train_steps(3, y, jnp.ones((4, 4)))
  train_steps(4, x, x)
  assert len(calls) == 2
  assert train_steps.flops["double"] == pytest.approx(2 * 8 * 4 * 4, rel=0.05)
  assert train_steps.take_flops() == pytest.approx(2 * 2 * 8 * 4 * 4 + 2 * 8**3, rel=0.05)


def test_train_steps_remember_the_first_non_finite_step():
  def step(state, batch):
    return state + 1, {
      "train/loss": jnp.where(state == batch, jnp.nan, 0.0),
      "health/grad_norm_text": jnp.float32(1.0),
      "train/mlm_accuracy": jnp.float32(jnp.nan),  # not a checked metric
    }

  train_steps = steps.TrainSteps({"s": jax.jit(step)}, kind_of=lambda step: "s")
  state = jnp.int32(0)
  for i in range(2):
    state, _ = train_steps(i, state, jnp.int32(5))
  assert train_steps.first_non_finite_step() is None
  for i in range(2, 8):  # the step from state 5 (the 6th update) has a NaN loss
    state, _ = train_steps(i, state, jnp.int32(5))
  assert train_steps.first_non_finite_step() == 6


def _spy_on_evaluation(monkeypatch) -> dict[str, list]:
  """Records the splits the evaluators encode and how often an encoder is made."""
  seen = {"encoded": [], "encoders": [], "boxes": []}
  eval_batches, make_encode_fn = data_lib.DataBundle.eval_batches, encode.make_encode_fn
  boxes = data_lib.DataBundle.ground_truth_boxes

  def spy_batches(self, mesh, split, anatomy=False):
    seen["encoded"].append(split)
    return eval_batches(self, mesh, split, anatomy)

  def spy_boxes(self, split):
    seen["boxes"].append(split)
    return boxes(self, split)

  def spy_encoder(model):
    seen["encoders"].append(model)
    return make_encode_fn(model)

  monkeypatch.setattr(data_lib.DataBundle, "eval_batches", spy_batches)
  monkeypatch.setattr(data_lib.DataBundle, "ground_truth_boxes", spy_boxes)
  monkeypatch.setattr(encode, "make_encode_fn", spy_encoder)
  return seen


def test_attention_png_reads_its_own_split_with_retrieval_off(tmp_path, monkeypatch):
  seen = _spy_on_evaluation(monkeypatch)
  c = tiny_config(**{"total_steps": 2})
  c.evals = ml_collections.ConfigDict(
    {"figure": dict(type="attention_png", split="validation", num_pairs=2, filename="fig.png")}
  )
  metrics, _ = train.train_and_evaluate(c, str(tmp_path), progress=False)
  assert (tmp_path / "fig.png").exists()
  assert seen["encoded"] == ["validation"] and seen["boxes"] == ["validation"]
  assert not any(k.startswith("eval/") for k in metrics)


def test_evaluators_of_one_type_on_two_splits_at_their_cadence(tmp_path, monkeypatch):
  seen = _spy_on_evaluation(monkeypatch)
  c = tiny_config(**{"total_steps": 4})
  c.evals = ml_collections.ConfigDict(
    {
      "retrieval_test": dict(type="retrieval", split="test", every_steps=2, ks=(1, 5)),
      "retrieval_val": dict(type="retrieval", split="validation", ks=(1,), scores=("global",)),
      "attention_png": dict(type="attention_png", split="test", num_pairs=2),
    }
  )
  train.train_and_evaluate(c, str(tmp_path), progress=False)
  # Step 2: retrieval_test alone; the end: all, the test split (read by two) encoded once.
  assert seen["encoded"] == ["test", "test", "validation"]
  assert len(seen["encoders"]) == 1  # one jitted encoder for the whole run
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "eval/retrieval_test/global/i2t_R@1" in r] == [2, 4]
  final = json.loads((tmp_path / "final_metrics.json").read_text())
  assert final["eval/retrieval_val/chance_R@1"] == pytest.approx(1 / 32)
  assert "eval/retrieval_val/local/i2t_R@1" not in final
  assert (tmp_path / "attention.png").exists()


@pytest.mark.parametrize(
  "entry, key",
  [
    (dict(type="retreival", split="test"), "config.evals.bad.type"),
    (dict(split="test"), "config.evals.bad.type"),
    (dict(type="retrieval", split="test", kss=(1,)), "config.evals.bad.kss"),
    (dict(type="retrieval"), "config.evals.bad.split"),
    (dict(type="retrieval", split="test", every_steps=-1), "config.evals.bad.every_steps"),
    (dict(type="retrieval", split="test", scores=("glob",)), "config.evals.bad.scores"),
  ],
)
def test_a_bad_evaluator_entry_fails_before_training_naming_the_key(tmp_path, entry, key):
  c = tiny_config()
  c.evals.bad = entry
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    train.train_and_evaluate(c, str(tmp_path), progress=False)
  assert not (tmp_path / "tokenizer").exists()  # nothing was read or trained
