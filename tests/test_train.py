"""End-to-end trainer behaviour on a tiny synthetic run: the loss falls, checkpoints round-trip, a
resumed run ends bit-identical to an uninterrupted one, NaN stops the run with the last good
checkpoint intact, and config overrides reject unknown keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jimte import train
from tests._tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


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


def test_resume_matches_an_uninterrupted_run(tmp_path):
  c = tiny_config(**{"num_epochs": 2.0, "loss.mixture": True})  # 16 steps, ITM and MLM steps mixed
  _, full = train.train_and_evaluate(c, str(tmp_path / "full"), progress=False)
  _, first = train.train_and_evaluate(
    c, str(tmp_path / "split"), stop_after_steps=6, progress=False
  )
  assert int(first.step) == 6
  _, resumed = train.train_and_evaluate(c, str(tmp_path / "split"), progress=False)
  assert int(resumed.step) == int(full.step) == 16
  for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip(tmp_path):
  c = tiny_config()
  _, state = train.train_and_evaluate(c, str(tmp_path), stop_after_steps=4, progress=False)
  from jimte import checkpointing

  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == 4
  restored, meta = ckpt.restore(checkpointing.abstract_like(state))
  assert meta["step"] == 4
  for a, b in zip(
    jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored)), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ckpt.close()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  c = tiny_config(**{"loss.mixture": False})
  train.train_and_evaluate(c, str(tmp_path), stop_after_steps=4, progress=False)
  c.optim.learning_rate = float("nan")  # poisons the next update: step 5's gradients become NaN
  with pytest.raises(train.NonFiniteError, match="non-finite"):
    train.train_and_evaluate(c, str(tmp_path), progress=False)
  from jimte import checkpointing

  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 4


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


def test_periodic_evaluation_keeps_the_best_checkpoint(tmp_path):
  c = tiny_config(
    **{
      "total_steps": 12,
      "eval_every_steps": 3,
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
