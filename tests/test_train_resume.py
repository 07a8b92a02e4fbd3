"""The trainer's checkpoints on a tiny synthetic run: they round-trip, a resumed run (one stream,
or the image-text and MLM streams) ends bit-identical to an uninterrupted one and prints the
untrained model's figures beside its own, and NaN stops the run with the last good checkpoint
intact. (Split from test_train.py so that the two test workers share the trainer runs.)"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jimte import steps, train
from tests._tiny import param_leaves, tiny_config


def test_resume_matches_an_uninterrupted_run(tmp_path, capsys):
  c = tiny_config(  # 16 image-text steps
    **{"num_epochs": 2.0, "loss.mixture": False, "evals.grounding.untrained_baseline": True}
  )
  _, full = train.train_and_evaluate(c, str(tmp_path / "full"), progress=False)
  _, first = train.train_and_evaluate(
    c, str(tmp_path / "split"), stop_after_steps=6, progress=False
  )
  assert int(first.step) == 6
  capsys.readouterr()
  _, resumed = train.train_and_evaluate(c, str(tmp_path / "split"), progress=False)
  assert int(resumed.step) == int(full.step) == int(full.itm_step) == 16
  for a, b in zip(param_leaves(full), param_leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  # The grounding figures of the untrained model, written at the start of a run and printed
  # beside the trained ones at its end, a resumed run included (read back from the work dir).
  untrained = json.loads((tmp_path / "split" / "untrained_metrics.json").read_text())
  assert untrained == json.loads((tmp_path / "full" / "untrained_metrics.json").read_text())
  assert untrained["eval/grounding/num_phrases"] > 0
  printed = capsys.readouterr().out
  assert "grounding of" in printed and "(untrained in brackets)" in printed
  final = json.loads((tmp_path / "split" / "final_metrics.json").read_text())
  assert final["eval/grounding/num_phrases"] == untrained["eval/grounding/num_phrases"]


def test_resume_with_two_streams_matches_an_uninterrupted_run(tmp_path):
  """Stopped after 14 updates (2 ITM, 12 MLM: both streams part-way), resumed: same parameters."""
  c = tiny_config(**{"num_epochs": 1.0, "loss.mixture": True, "evals": {}})
  stop = 14
  kinds = steps.step_kinds(c.seed, 0, stop, c.loss)
  assert 0 < kinds.sum() < stop  # both streams have moved
  _, full = train.train_and_evaluate(c, str(tmp_path / "full"), progress=False)
  _, first = train.train_and_evaluate(
    c, str(tmp_path / "split"), stop_after_steps=stop, progress=False
  )
  assert (int(first.step), int(first.itm_step)) == (stop, int(kinds.sum()))
  from jimte import checkpointing

  ckpt = checkpointing.Checkpointer(str(tmp_path / "split" / "checkpoints"))
  saved, meta = ckpt.restore(checkpointing.abstract_like(first), step=stop)
  ckpt.close()
  assert int(saved.step) == stop and int(saved.itm_step) == int(kinds.sum())
  assert (meta["itm_steps"], meta["mlm_steps"]) == (int(kinds.sum()), stop - int(kinds.sum()))
  _, resumed = train.train_and_evaluate(c, str(tmp_path / "split"), progress=False)
  assert int(resumed.step) == int(full.step) and int(resumed.itm_step) == int(full.itm_step) == 8
  for a, b in zip(param_leaves(full), param_leaves(resumed), strict=True):
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


@pytest.mark.parametrize("log_every_steps", [2, 1000])  # noticed at a log step | before a save
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, log_every_steps):
  c = tiny_config(**{"loss.mixture": False, "log_every_steps": log_every_steps})
  train.train_and_evaluate(c, str(tmp_path), stop_after_steps=4, progress=False)
  c.optim.learning_rate = float("nan")  # poisons the next update: step 5's gradients become NaN
  with pytest.raises(train.NonFiniteError, match="non-finite"):
    train.train_and_evaluate(c, str(tmp_path), progress=False)
  from jimte import checkpointing

  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 4
