"""Ablation sweeps: the `launch.hyper` primitives, the plan of runs, the check of every override
before any run, the local runner (real `jimte.main` processes, resumed and not redone), the
results table, and the TPU pod launches."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
from pathlib import Path

import numpy as np
import pytest

from jimte import train
from launch import hyper, sweep, sweep_results, tpu_pod
from tests._tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "configs" / "sweeps").glob("[a-z]*.py"))


def _write_sweep(tmp_path: Path, body: str, name: str = "mini.py") -> str:
  path = tmp_path / name
  path.write_text(body)
  return str(path)


# --------------------------------------------------------------------------- primitives


def test_product_zip_chain_and_labels():
  grid = hyper.product([hyper.sweep("a", [1, 2]), hyper.sweep("config.b", ["x", "y", "z"])])
  assert grid == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
  zipped = hyper.zipit([hyper.sweep("a", [1, 2]), hyper.sweep("b", [3, 4])])
  assert zipped == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  chained = hyper.chainit([hyper.fixed("a", 0), hyper.label("two", hyper.fixed({"a": 2, "c": 1}))])
  assert chained == [{"a": 0}, {"a": 2, "c": 1, hyper.LABEL_KEY: "two"}]
  assert hyper.overrides_of(chained[1]) == {"a": 2, "c": 1}
  with pytest.raises(ValueError, match="equal length"):
    hyper.zipit([hyper.sweep("a", [1, 2]), hyper.sweep("b", [3])])
  with pytest.raises(ValueError, match="'a' is set twice"):
    hyper.product([hyper.fixed("a", 1), hyper.fixed("a", 2)])
  with pytest.raises(ValueError, match="non-empty sequence"):
    hyper.sweep("a", "abc")


def test_plan_names_work_dirs_by_the_varying_overrides(tmp_path):
  path = _write_sweep(
    tmp_path,
    "BASE_CONFIG = 'configs/default.py:tiny'\nSEEDS = (0, 1)\n"
    "def get_hyper(h):\n"
    "  return h.product([h.fixed('num_epochs', 1.0), h.sweep('loss.gamma1', [2.0, 8.0])])\n",
  )
  s = sweep.load_sweep(path)
  runs = sweep.plan(s, str(tmp_path / "root"))
  assert [(r.point, r.seed) for r in runs] == [
    ("loss.gamma1=2.0", 0),
    ("loss.gamma1=2.0", 1),
    ("loss.gamma1=8.0", 0),
    ("loss.gamma1=8.0", 1),
  ]
  assert runs[1].workdir == str(tmp_path / "root" / "mini" / "loss.gamma1=2.0" / "seed1")
  assert runs[1].overrides == {"num_epochs": 1.0, "loss.gamma1": 2.0, "seed": 1}
  assert [r.seed for r in sweep.plan(s, "r", seeds=[5])] == [5, 5]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
  ("point", "message"),
  [
    ("h.fixed('optim.learning_rat', 1e-3)", "unknown config key 'optim.learning_rat'"),
    (
      "h.fixed('loss.gamma1', 'big')",
      "loss.gamma1='big' has type str, the config's field is float",
    ),
    ("h.fixed('batch_size', 8.5)", "batch_size=8.5 has type float, the config's field is int"),
    ("h.fixed('loss.negatives', 3)", "loss.negatives=3 has type int, the config's field is str"),
    ("h.fixed('loss.mixture', 1)", "loss.mixture=1 has type int, the config's field is bool"),
  ],
)
def test_a_bad_override_fails_before_any_run_naming_it(tmp_path, point, message):
  path = _write_sweep(
    tmp_path,
    f"BASE_CONFIG = 'configs/default.py:tiny'\ndef get_hyper(h):\n  return {point}\n",
  )
  root = tmp_path / "root"
  with pytest.raises(sweep.SweepError, match="nothing was run") as err:
    sweep.main(["run", path, "--root", str(root)])
  assert message in str(err.value)
  assert not root.exists()  # no run started, not even its work dir


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_shipped_sweep_is_valid(path):
  s = sweep.load_sweep(str(path))
  runs = sweep.plan(s, "/nonexistent/root")
  assert len({r.workdir for r in runs}) == len(runs)
  sweep.validate(s, runs)  # every key exists and has its field's type


def test_objectives_sweep_adds_one_group_of_terms_per_point():
  s = sweep.load_sweep(str(REPO / "configs" / "sweeps" / "objectives.py"))
  assert [p[hyper.LABEL_KEY] for p in s.points] == [
    "global_ce",
    "+region_word",
    "+triplets",
    "+mlm",
  ]
  on = [
    {k.split(".")[-1] for k, v in p.items() if k.startswith("loss.weights.") and v > 0}
    for p in s.points
  ]
  assert on[0] == {"sentence_ce_i2t", "sentence_ce_t2i"}
  assert on[1] == on[0] | {"word_ce_i2t", "word_ce_t2i"}
  assert on[2] == on[3] and len(on[2]) == 8
  assert len(s.seeds) == 3


# --------------------------------------------------------------------------- the local runner


@pytest.mark.slow
def test_local_sweep_resumes_an_interrupted_run_and_skips_finished_ones(tmp_path):
  path = _write_sweep(
    tmp_path,
    "BASE_CONFIG = 'configs/default.py:tiny'\nSEEDS = (0,)\n"
    "METRICS = ('eval/retrieval/global/i2t_R@10',)\n"
    "def get_hyper(h):\n"
    "  return h.chainit([h.label('all_terms', h.fixed({})),\n"
    "                    h.label('no_word_ce', h.fixed({'loss.weights.word_ce_i2t': 0.0,\n"
    "                                                   'loss.weights.word_ce_t2i': 0.0}))])\n",
  )
  root = tmp_path / "root"
  s = sweep.load_sweep(path)
  runs = sweep.plan(s, str(root))
  # Interrupt the first run after 3 of its 8 steps, as a pre-empted run would stop.
  config = tiny_config(seed=0)
  train.train_and_evaluate(config, runs[0].workdir, stop_after_steps=3, progress=False)
  assert not sweep.is_finished(runs[0].workdir)

  lines: list[str] = []
  outcome = sweep.run_local(s, runs, echo=lines.append)
  assert outcome == {"done": [], "ran": [r.workdir for r in runs], "failed": []}
  assert "resuming" in lines[0] and "starting" in lines[2]
  for run in runs:
    final = json.loads(Path(run.workdir, "final_metrics.json").read_text())
    assert final["step"] == 8
    meta = json.loads(Path(run.workdir, sweep.RUN_META).read_text())
    assert meta["overrides"] == run.overrides and meta["point"] == run.point
  assert "resumed from step 3" in Path(runs[0].workdir, "log.txt").read_text()

  again: list[str] = []
  assert sweep.run_local(s, runs, echo=again.append)["done"] == [r.workdir for r in runs]
  assert all("not redone" in line for line in again)

  table = sweep_results.collect(str(root / "mini"), s.metrics)
  metric = "eval/retrieval/global/i2t_R@10"
  for point, run in zip(table.points, runs, strict=True):
    final = json.loads(Path(run.workdir, "final_metrics.json").read_text())
    assert point.point == run.point and point.values[metric] == [final[metric]]
  assert all(os.path.exists(f) for f in table.files)


# --------------------------------------------------------------------------- the results table


def _fake_run(root: Path, point: str, seed: int, overrides: dict, final: dict | None) -> None:
  run_dir = root / point / f"seed{seed}"
  run_dir.mkdir(parents=True)
  meta = {"point": point, "seed": seed, "overrides": {**overrides, "seed": seed}}
  (run_dir / sweep.RUN_META).write_text(json.dumps(meta))
  if final is not None:
    (run_dir / sweep.FINAL_METRICS).write_text(json.dumps(final))


def test_collect_averages_finished_seeds_and_counts_the_rest(tmp_path):
  root = tmp_path / "objectives"
  rng = np.random.default_rng(0)
  values = {"a": rng.uniform(size=3), "b": rng.uniform(size=2)}
  for seed, v in enumerate(values["a"]):
    _fake_run(root, "a", seed, {"x": 1}, {"eval/R@10": float(v), "loss": 1.0, "step": 8})
  for seed, v in enumerate(values["b"]):
    _fake_run(root, "b", seed, {"x": 2}, {"eval/R@10": float(v), "loss": 2.0, "step": 8})
  _fake_run(root, "b", 2, {"x": 2}, None)  # still running
  table = sweep_results.collect(str(root))
  assert table.metrics == ["eval/R@10", "loss"]  # every shared metric but the step
  by_name = {p.point: p for p in table.points}
  assert (by_name["a"].seeds_finished, by_name["a"].seeds_total) == (3, 3)
  assert (by_name["b"].seeds_finished, by_name["b"].seeds_total) == (2, 3)
  mean, std = sweep_results.mean_std(by_name["b"].values["eval/R@10"])
  assert mean == pytest.approx(values["b"].mean()) and std == pytest.approx(values["b"].std(ddof=1))
  assert "| b | 2/3 |" in table.markdown
  assert f"{100 * values['a'].mean():.1f} ± {100 * values['a'].std(ddof=1):.1f}" in table.markdown
  with open(root / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["point"] for r in rows] == ["a", "b"]
  assert json.loads(rows[0]["overrides"]) == {"x": 1}
  assert float(rows[1]["eval/R@10_mean"]) == pytest.approx(values["b"].mean())
  assert {Path(f).name for f in table.files} >= {"results.md", "eval_Rat10.png", "loss.png"}
  assert math.isnan(sweep_results.mean_std([])[0])
  # In the sweep's own order (as `launch.sweep collect` passes it), not the directories'.
  ordered = sweep_results.collect(str(root), write=False, point_order=["b", "a"])
  assert [p.point for p in ordered.points] == ["b", "a"]


def test_collect_of_an_unstarted_sweep_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing was started"):
    sweep_results.collect(str(tmp_path / "none"))


# --------------------------------------------------------------------------- TPU pod launches


def test_pod_launches_are_tpu_pod_runs_of_jimte_main(tmp_path, capsys):
  path = str(REPO / "configs" / "sweeps" / "objectives.py")
  args = ["pod", path, "--name", "jimte-v4", "--zone", "us-central2-b", "--root", "gs://b/sw"]
  assert sweep.main(args) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 12  # 4 points x 3 seeds
  argv = shlex.split(lines[0])
  assert argv[1:4] == ["-m", "launch.tpu_pod", "run"]
  pod = tpu_pod.parse(argv[3:])
  assert pod.workdir == "gs://b/sw/objectives/global_ce/seed0"
  (remote,) = tpu_pod.commands(pod)
  assert "jimte.main" in remote[-1] and "--config.loss.weights.word_ce_i2t=0.0" in remote[-1]
  with pytest.raises(sweep.SweepError, match="gs://"):
    sweep.main(["pod", path, "--name", "n", "--zone", "z", "--root", str(tmp_path)])


def test_jimte_sweep_subcommand_prints_runs_and_reports_bad_sweeps(tmp_path, capsys):
  from jimte import cli

  path = str(REPO / "configs" / "sweeps" / "objectives.py")
  assert cli.main(["sweep", "print", path, "--root", str(tmp_path), "--only", "+mlm"]) == 0
  out = capsys.readouterr().out
  assert out.count("# +mlm seed") == 3 and "--config.loss.mixture=True" in out
  assert cli.main(["sweep", "run", str(tmp_path / "absent.py")]) == 2
  assert "no sweep file" in capsys.readouterr().err
