"""Runs an ablation sweep (configs/sweeps/*.py) one run after another, or prints / submits its runs
as TPU pod launches, and collects the finished runs into one results table.

  python -m launch.sweep run     configs/sweeps/objectives.py [--root DIR] [--seeds 0,1,2]
  python -m launch.sweep print   configs/sweeps/objectives.py   # the runs and their commands
  python -m launch.sweep collect configs/sweeps/objectives.py   # results.{csv,md}, a PNG per metric
  python -m launch.sweep pod     configs/sweeps/objectives.py --name jimte-v4 --zone us-central2-b \
      --root gs://BUCKET/sweeps [--submit]                     # one launch.tpu_pod run per run

A sweep file defines `get_hyper(h)` (points built from `launch.hyper`), `BASE_CONFIG` (a config
file with its optional `:arg`), and optionally `SEEDS`, `METRICS` and `NAME`. Each run's work dir
is `<root>/<sweep name>/<point name>/seed<k>`; it is an ordinary `jimte.main` work dir, so a run
that was interrupted resumes from its checkpoint and a finished one (with `final_metrics.json`) is
not redone. Every override is checked against the base config before any run starts: an unknown key
or a value of the wrong type stops the sweep with the run and key named.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from launch import hyper

REPO = Path(__file__).resolve().parents[1]
RUN_META = "sweep_run.json"  # written into each run's work dir before it starts
FINAL_METRICS = "final_metrics.json"  # written by jimte.train when the run's schedule is complete


class SweepError(ValueError):
  """A sweep definition or one of its overrides is invalid (the message names it)."""


# ----------------------------------------------------------------------------------------------
# Definitions: a sweep file -> its points -> its runs.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  path: str
  base_config: str
  points: list[hyper.Point]
  seeds: tuple[int, ...]
  metrics: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Run:
  point: str  # the point's name (its label, else its overrides)
  seed: int
  overrides: dict[str, Any]  # config overrides, the seed included
  workdir: str

  def main_args(self, base_config: str) -> list[str]:
    """The `jimte.main` flags of this run (without --workdir)."""
    return [
      "--config",
      base_config,
      *(f"--config.{k}={format_value(v)}" for k, v in self.overrides.items()),
    ]


def load_sweep(path: str) -> Sweep:
  """Imports a sweep file and evaluates its `get_hyper(h)`."""
  file = Path(path)
  if not file.is_file():
    raise SweepError(f"no sweep file {path}")
  spec = importlib.util.spec_from_file_location(f"_sweep_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for attr in ("get_hyper", "BASE_CONFIG"):
    if not hasattr(module, attr):
      raise SweepError(f"{path} defines no {attr}")
  points = module.get_hyper(hyper)
  if not points or not all(isinstance(p, dict) for p in points):
    raise SweepError(f"{path}: get_hyper(h) must return a non-empty list of dicts")
  return Sweep(
    name=getattr(module, "NAME", file.stem),
    path=str(path),
    base_config=module.BASE_CONFIG,
    points=points,
    seeds=tuple(getattr(module, "SEEDS", (0,))),
    metrics=tuple(getattr(module, "METRICS", ())),
  )


def point_name(point: hyper.Point, shared: frozenset[str] = frozenset()) -> str:
  """A point's directory name: its label, else its `key=value` pairs (short keys; the `shared`
  keys, set alike in every point, left out) and a hash when that is long."""
  if hyper.LABEL_KEY in point:
    name = str(point[hyper.LABEL_KEY])
  else:
    overrides = {k: v for k, v in hyper.overrides_of(point).items() if k not in shared}
    text = ",".join(
      f"{'.'.join(k.split('.')[-2:])}={format_value(v)}" for k, v in overrides.items()
    )
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()
    name = f"{text[:80]}-{digest[:8]}" if len(text) > 80 else (text or "base")
  name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)
  return name


def _shared_keys(points: Sequence[dict[str, Any]]) -> frozenset[str]:
  """Keys set to one value in every point (they name no point)."""
  if len(points) < 2:
    return frozenset()
  first = points[0]
  return frozenset(
    k for k, v in first.items() if all(k in p and _same(p[k], v) for p in points[1:])
  )


def plan(sweep: Sweep, root: str, seeds: Sequence[int] | None = None) -> list[Run]:
  """Every (point, seed) run of `sweep`, with its work dir under `root`."""
  seeds = tuple(sweep.seeds if seeds is None else seeds)
  runs, names = [], {}
  shared = _shared_keys([hyper.overrides_of(p) for p in sweep.points])
  for point in sweep.points:
    overrides = hyper.overrides_of(point)
    if "seed" in overrides:
      raise SweepError(f"{sweep.path}: set seeds with SEEDS or --seeds, not as an override")
    name = point_name(point, shared)
    if names.setdefault(name, overrides) != overrides:
      raise SweepError(f"{sweep.path}: two different points are both named {name!r}")
    for seed in seeds:
      workdir = os.path.join(root, sweep.name, name, f"seed{seed}")
      runs.append(Run(name, int(seed), {**overrides, "seed": int(seed)}, workdir))
  return runs


# ----------------------------------------------------------------------------------------------
# Checking every override before any run: the key exists, the value has the field's type, and
# the command line `jimte.main` will get parses back to exactly that value.
# ----------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
  """An override's text on the `jimte.main` command line (parsed back by ml_collections)."""
  if isinstance(value, list | tuple):
    return repr(tuple(value))
  return str(value)


def parse_config(base_config: str, args: Sequence[str]):
  """The ConfigDict `jimte.main` would build from `--config base_config` and override flags."""
  from absl import flags
  from ml_collections import config_flags

  values = flags.FlagValues()
  argv = ["jimte.main", f"--config={base_config}", *args]
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=values, sys_argv=argv)
  cwd = os.getcwd()
  try:
    os.chdir(REPO)  # config paths are relative to the repository, as in the README
    values(argv)
    return values.config
  finally:
    os.chdir(cwd)


def _field(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _type_problem(default: Any, value: Any) -> str | None:
  if default is None or value is None:
    return None
  if isinstance(default, bool) or isinstance(value, bool):
    ok = isinstance(default, bool) and isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, int | float)
  elif isinstance(default, int):
    ok = isinstance(value, int)
  elif isinstance(default, list | tuple):
    ok = isinstance(value, list | tuple)
  else:
    ok = isinstance(value, type(default))
  if ok:
    return None
  return (
    f"has type {type(value).__name__}, the config's field is {type(default).__name__} ({default!r})"
  )


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, list | tuple) and isinstance(b, list | tuple):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
  return a == b


def validate(sweep: Sweep, runs: Sequence[Run]) -> None:
  """Raises `SweepError` naming every run and key whose override is unknown or of the wrong type."""
  try:
    base = parse_config(sweep.base_config, [])
  except Exception as e:  # any failure of the base config is reported as such
    raise SweepError(f"{sweep.path}: BASE_CONFIG {sweep.base_config!r} does not load: {e}") from e
  problems = []
  for run in runs:
    for key, value in run.overrides.items():
      try:
        default = _field(base, key)
      except (KeyError, AttributeError):
        problems.append(f"{run.point}/seed{run.seed}: unknown config key {key!r}")
        continue
      if (problem := _type_problem(default, value)) is not None:
        problems.append(f"{run.point}/seed{run.seed}: {key}={value!r} {problem}")
    if problems:
      continue
    try:
      parsed = parse_config(sweep.base_config, run.main_args(sweep.base_config)[2:])
    except Exception as e:  # the flag parser's message names the flag
      problems.append(f"{run.point}/seed{run.seed}: {e}")
      continue
    for key, value in run.overrides.items():
      if not _same(_field(parsed, key), value):
        problems.append(
          f"{run.point}/seed{run.seed}: {key}={value!r} parses as {_field(parsed, key)!r}"
        )
  if problems:
    raise SweepError(
      f"{sweep.path}: invalid overrides, nothing was run:\n  " + "\n  ".join(problems)
    )


# ----------------------------------------------------------------------------------------------
# Running: locally one after another, or as TPU pod launches.
# ----------------------------------------------------------------------------------------------
def is_finished(workdir: str) -> bool:
  return _exists(os.path.join(workdir, FINAL_METRICS))


def _exists(path: str) -> bool:
  if path.startswith("gs://"):
    import tensorflow as tf

    return bool(tf.io.gfile.exists(path))
  return os.path.exists(path)


def _write_meta(sweep: Sweep, run: Run) -> None:
  os.makedirs(run.workdir, exist_ok=True)
  meta = {
    "sweep": sweep.name,
    "sweep_file": sweep.path,
    "base_config": sweep.base_config,
    "point": run.point,
    "seed": run.seed,
    "overrides": run.overrides,
  }
  with open(os.path.join(run.workdir, RUN_META), "w") as f:
    json.dump(meta, f, indent=2, default=str)


def run_local(
  sweep: Sweep,
  runs: Sequence[Run],
  *,
  python: str = sys.executable,
  extra_args: Sequence[str] = (),
  echo: Callable[[str], None] = print,
) -> dict[str, list[str]]:
  """Runs each unfinished run as its own `python -m jimte.main` process, one after another.

  Output goes to `<workdir>/log.txt`. A failed run is reported and the sweep goes on. Returns
  the work dirs by outcome: `done` (already finished), `ran`, `failed`.
  """
  outcome: dict[str, list[str]] = {"done": [], "ran": [], "failed": []}
  for i, run in enumerate(runs, 1):
    tag = f"[{i}/{len(runs)}] {run.point} seed {run.seed}"
    if is_finished(run.workdir):
      echo(f"{tag}: finished before, not redone")
      outcome["done"].append(run.workdir)
      continue
    _write_meta(sweep, run)
    resuming = os.path.isdir(os.path.join(run.workdir, "checkpoints"))
    echo(f"{tag}: {'resuming' if resuming else 'starting'} in {run.workdir}")
    cmd = [python, "-m", "jimte.main", "--workdir", run.workdir, "--noprogress"]
    cmd += [*run.main_args(sweep.base_config), *extra_args]
    start = time.time()
    with open(os.path.join(run.workdir, "log.txt"), "a") as log:
      log.write(f"$ {shlex.join(cmd)}\n")
      log.flush()
      code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    took = time.time() - start
    if code == 0 and is_finished(run.workdir):
      echo(f"{tag}: finished in {took:.0f} s")
      outcome["ran"].append(run.workdir)
    else:
      echo(f"{tag}: FAILED (exit code {code}, {took:.0f} s); see {run.workdir}/log.txt")
      outcome["failed"].append(run.workdir)
  return outcome


def pod_commands(sweep: Sweep, runs: Sequence[Run], pod_args: Sequence[str]) -> list[list[str]]:
  """One `launch.tpu_pod run` command line per unfinished run (work dirs on GCS)."""
  cmds = []
  for run in runs:
    if not run.workdir.startswith("gs://"):
      raise SweepError(f"pod runs need a gs:// --root shared by every worker, got {run.workdir}")
    cmds.append(
      [sys.executable, "-m", "launch.tpu_pod", "run", *pod_args, "--workdir", run.workdir, "--"]
      + run.main_args(sweep.base_config)
    )
  return cmds


def submit_pod(
  runs: Sequence[Run],
  cmds: Sequence[list[str]],
  *,
  poll_s: float = 60.0,
  timeout_s: float = 7 * 24 * 3600.0,
  call: Callable[[list[str]], int] = subprocess.call,
  echo: Callable[[str], None] = print,
) -> int:
  """Starts the runs on the pod one at a time (a run holds the whole slice), waiting for each
  run's final metrics before the next; finished runs are skipped. Returns an exit code."""
  for run, cmd in zip(runs, cmds, strict=True):
    if is_finished(run.workdir):
      echo(f"{run.point} seed {run.seed}: finished before, not redone")
      continue
    echo(shlex.join(cmd))
    if (code := call(cmd)) != 0:
      echo(f"{run.point} seed {run.seed}: launch failed (exit code {code})")
      return code
    waited = 0.0
    while not is_finished(run.workdir):
      if waited > timeout_s:
        echo(f"{run.point} seed {run.seed}: no {FINAL_METRICS} after {timeout_s:.0f} s")
        return 1
      time.sleep(poll_s)
      waited += poll_s
  return 0


# ----------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------
def _parse(argv: Sequence[str] | None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("action", choices=["run", "print", "collect", "pod"])
  parser.add_argument("sweep", help="a sweep file, e.g. configs/sweeps/objectives.py")
  parser.add_argument("--root", default="workdirs/sweeps", help="the sweeps' work dirs (or gs://)")
  parser.add_argument(
    "--seeds", default="", help="comma-separated seeds (default: the file's SEEDS)"
  )
  parser.add_argument("--only", default="", help="comma-separated point names to keep")
  parser.add_argument("--name", help="pod: TPU VM name")
  parser.add_argument("--zone", help="pod: zone")
  parser.add_argument("--project", default=None, help="pod: project")
  parser.add_argument("--submit", action="store_true", help="pod: start the runs, one at a time")
  argv = list(sys.argv[1:] if argv is None else argv)
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  args.extra = argv[split + 1 :]  # run: extra jimte.main flags (e.g. --config.total_steps=10)
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse(argv)
  sweep = load_sweep(args.sweep)
  seeds = [int(s) for s in args.seeds.split(",") if s] or None
  runs = plan(sweep, args.root, seeds)
  if args.only:
    keep = set(args.only.split(","))
    unknown = keep - {r.point for r in runs}
    if unknown:
      raise SweepError(f"--only names no point of {sweep.path}: {sorted(unknown)}")
    runs = [r for r in runs if r.point in keep]
  if args.action == "collect":
    from launch import sweep_results

    table = sweep_results.collect(
      os.path.join(args.root, sweep.name),
      sweep.metrics,
      point_order=list(dict.fromkeys(r.point for r in runs)),
    )
    print(table.markdown)
    print(f"wrote {', '.join(table.files)}")
    return 0
  validate(sweep, runs)
  if args.action == "print":
    for run in runs:
      state = "finished" if is_finished(run.workdir) else "to run"
      print(f"# {run.point} seed {run.seed} ({state})")
      print(
        shlex.join(
          [
            "python",
            "-m",
            "jimte.main",
            "--workdir",
            run.workdir,
            *run.main_args(sweep.base_config),
          ]
        )
      )
    return 0
  if args.action == "pod":
    if not (args.name and args.zone):
      raise SweepError("pod needs --name and --zone of the TPU VM")
    pod_args = ["--name", args.name, "--zone", args.zone]
    pod_args += ["--project", args.project] if args.project else []
    cmds = pod_commands(sweep, runs, pod_args)
    if not args.submit:
      for cmd in cmds:
        print(shlex.join(cmd))
      return 0
    return submit_pod(runs, cmds)
  outcome = run_local(sweep, runs, extra_args=args.extra)
  print(
    f"sweep {sweep.name}: {len(outcome['ran'])} ran, {len(outcome['done'])} finished before, "
    f"{len(outcome['failed'])} failed"
  )
  return 1 if outcome["failed"] else 0


def cli(argv: Sequence[str] | None = None) -> int:
  """`main`, with a bad sweep reported as one message and exit code 2 (`jimte sweep`)."""
  try:
    return main(argv)
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(cli())
