"""ALC-ITR's two stages through the trainer: stage 2 (configs/alc_itr.py) starts from a stage-1
run's parameters and tokenizer, trains the RRA-VL loss beside the JoImTeRNet objectives, and
evaluates location-conditioned retrieval beside plain retrieval."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import alc_itr
from jimte import checkpointing, optim, sharding, train
from jimte import data as data_lib
from jimte.models.joimternet import build_model
from jimte.steps import init_train_state
from tests._tiny import apply_overrides


def stage_two_config(stage_one: str, **overrides):
  c = alc_itr.get_config("tiny")
  c.data.num_train, c.data.num_eval = 16, 8
  c.total_steps = 2
  c.checkpoint_every_steps = 1000
  c.init_from = stage_one
  for name in [k for k in c.evals if k != "anatomy"]:
    del c.evals[name]
  return apply_overrides(c, **overrides)


def fresh_state(config, workdir):
  data = data_lib.DataBundle.create(config, workdir)
  model_config = config.model.copy_and_resolve_references()
  model_config.text.vocab_size = data.tokenizer.vocab_size
  mesh = sharding.make_mesh(config.mesh)
  return init_train_state(
    config,
    build_model(model_config),
    optim.make_optimizers(config.optim),
    mesh,
    jax.random.key(config.seed + 1),
  )


def test_init_from_takes_every_stage_one_array_and_keeps_the_new_head(trained_workdir, tmp_path):
  config = stage_two_config(trained_workdir)
  state, shardings = fresh_state(config, str(tmp_path))
  merged, counts = checkpointing.init_from_run(state, shardings, trained_workdir)
  saved, _ = checkpointing.load_state_numpy(os.path.join(trained_workdir, "checkpoints"))
  flat_saved = traverse_util.flatten_dict(saved["params"], sep="/")
  flat = traverse_util.flatten_dict(jax.device_get(merged.params), sep="/")
  assert set(flat) - set(flat_saved) == {"image/anatomy_head/kernel", "image/anatomy_head/bias"}
  for path, value in flat_saved.items():
    np.testing.assert_array_equal(flat[path], value, err_msg=path)
  np.testing.assert_array_equal(flat["image/anatomy_head/kernel"], np.eye(32, dtype=np.float32))
  saved_stats = traverse_util.flatten_dict(saved["batch_stats"], sep="/")
  stats = traverse_util.flatten_dict(jax.device_get(merged.batch_stats), sep="/")
  for path, value in saved_stats.items():
    np.testing.assert_array_equal(stats[path], value, err_msg=path)
  assert counts == {"taken": len(flat_saved) + len(saved_stats), "new": 2}


def test_init_from_a_run_of_another_shape_names_the_parameter(trained_workdir, tmp_path):
  config = stage_two_config(trained_workdir, **{"model.embed_dim": 16})
  config.tokenizer.path = os.path.join(trained_workdir, "tokenizer")
  state, shardings = fresh_state(config, str(tmp_path))
  with pytest.raises(ValueError, match=r"init_from=.*params 'image/.*' has shape"):
    checkpointing.init_from_run(state, shardings, trained_workdir)


def test_stage_two_trains_the_conditioned_loss_and_reports_conditioned_retrieval(
  trained_workdir, tmp_path
):
  workdir = str(tmp_path / "stage2")
  metrics, _ = train.train_and_evaluate(stage_two_config(trained_workdir), workdir, progress=False)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  trained = [r for r in rows if "train/anatomy" in r]
  assert trained and all(
    np.isfinite(r["train/anatomy"]) and r["train/anatomy"] > 0 for r in trained
  )
  assert all("train/word_ce_i2t" in r for r in trained)  # stage 1's objectives still train
  # The tokenizer is the stage-1 run's, byte for byte.
  for name in os.listdir(os.path.join(trained_workdir, "tokenizer")):
    paths = (os.path.join(d, "tokenizer", name) for d in (workdir, trained_workdir))
    a, b = (pathlib.Path(p).read_bytes() for p in paths)
    assert a == b, name
  kinds = ("global", "region_text", "region_image", "blend")
  for kind in kinds:
    value = metrics[f"eval/anatomy/{kind}/mean_average_precision"]
    assert 0.0 < value <= 1.0, (kind, value)
  assert metrics["eval/anatomy/num_queries"] > 0
  with open(os.path.join(workdir, "untrained_metrics.json")) as f:
    before = json.load(f)  # the stage-1 model, before the first stage-2 update
  assert before["eval/anatomy/num_queries"] == metrics["eval/anatomy/num_queries"]
  # The conditioned loss reached the anatomy head: it left the identity it started from.
  saved, _ = checkpointing.load_state_numpy(os.path.join(workdir, "checkpoints"))
  kernel = saved["params"]["image"]["anatomy_head"]["kernel"]
  assert np.abs(kernel - np.eye(kernel.shape[0])).max() > 1e-6
