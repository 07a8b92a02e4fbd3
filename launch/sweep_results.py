"""Collects a sweep's finished runs into one table: CSV and Markdown (mean ± std over seeds), and a
PNG per metric. Runs still going (or failed) are counted, not averaged: a sweep that is still
running collects what has finished.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
from collections.abc import Sequence

from launch.sweep import FINAL_METRICS, RUN_META


@dataclasses.dataclass(frozen=True)
class PointResult:
  point: str
  overrides: dict  # the point's overrides, the seed left out
  seeds_total: int
  values: dict[str, list[float]]  # metric -> one value per finished seed

  @property
  def seeds_finished(self) -> int:
    return max((len(v) for v in self.values.values()), default=0)


@dataclasses.dataclass(frozen=True)
class Table:
  points: list[PointResult]
  metrics: list[str]
  markdown: str
  files: list[str]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value; NaN for none)."""
  n = len(values)
  if n == 0:
    return math.nan, math.nan
  mean = sum(values) / n
  if n == 1:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def read_runs(sweep_dir: str) -> list[tuple[dict, dict | None]]:
  """(run meta, final metrics or None) of every run under `sweep_dir`, in directory order."""
  runs = []
  for meta_path in sorted(glob.glob(os.path.join(sweep_dir, "*", "*", RUN_META))):
    with open(meta_path) as f:
      meta = json.load(f)
    final_path = os.path.join(os.path.dirname(meta_path), FINAL_METRICS)
    final = None
    if os.path.exists(final_path):
      with open(final_path) as f:
        final = json.load(f)
    runs.append((meta, final))
  return runs


def _fmt(mean: float, std: float, n: int, percent: bool) -> str:
  if n == 0:
    return "–"
  scale = 100.0 if percent else 1.0
  digits = 1 if percent else 4
  text = f"{mean * scale:.{digits}f}"
  return text + (f" ± {std * scale:.{digits}f}" if n > 1 else "")


def _is_rate(metric: str) -> bool:
  return "R@" in metric or "recall" in metric.lower() or "auroc" in metric.lower()


def collect(
  sweep_dir: str, metrics: Sequence[str] = (), write: bool = True, point_order: Sequence[str] = ()
) -> Table:
  """Groups the runs of `sweep_dir` by point; writes results.csv, results.md and <metric>.png.
  Points come in `point_order` (the sweep's own order), any others after it in directory order."""
  runs = read_runs(sweep_dir)
  if not runs:
    raise FileNotFoundError(f"no run of a sweep under {sweep_dir} (nothing was started there)")
  if not metrics:  # every numeric metric the finished runs share
    finals = [final for _, final in runs if final]
    common = set.intersection(*(set(f) for f in finals)) if finals else set()
    metrics = sorted(m for m in common if m != "step")
  order: dict[str, PointResult] = {}
  for meta, final in runs:
    point = meta["point"]
    overrides = {k: v for k, v in meta["overrides"].items() if k != "seed"}
    result = order.setdefault(point, PointResult(point, overrides, 0, {m: [] for m in metrics}))
    order[point] = dataclasses.replace(result, seeds_total=result.seeds_total + 1)
    if final is not None:
      for m in metrics:
        if m not in final:
          raise KeyError(f"{meta['point']}/seed{meta['seed']}: {FINAL_METRICS} has no {m!r}")
        order[point].values[m].append(float(final[m]))
  rank = {name: i for i, name in enumerate(point_order)}
  points = sorted(order.values(), key=lambda p: rank.get(p.point, len(rank)))  # stable
  markdown = _markdown(points, list(metrics))
  files = []
  if write:
    files = _write(sweep_dir, points, list(metrics), markdown)
  return Table(points, list(metrics), markdown, files)


def _markdown(points: list[PointResult], metrics: list[str]) -> str:
  header = ["point", "seeds", *metrics]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for p in points:
    cells = [p.point, f"{p.seeds_finished}/{p.seeds_total}"]
    for m in metrics:
      mean, std = mean_std(p.values[m])
      cells.append(_fmt(mean, std, len(p.values[m]), _is_rate(m)))
    lines.append("| " + " | ".join(cells) + " |")
  note = "mean ± sample std over the finished seeds"
  if any(_is_rate(m) for m in metrics):
    note += "; recalls and AUROCs in %"
  return "\n".join(lines) + f"\n\n({note})\n"


def _write(
  sweep_dir: str, points: list[PointResult], metrics: list[str], markdown: str
) -> list[str]:
  csv_path = os.path.join(sweep_dir, "results.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(
      ["point", "overrides", "seeds_finished", "seeds_total"]
      + [f"{m}{suffix}" for m in metrics for suffix in ("_mean", "_std")]
    )
    for p in points:
      row = [p.point, json.dumps(p.overrides, sort_keys=True), p.seeds_finished, p.seeds_total]
      for m in metrics:
        row += list(mean_std(p.values[m]))
      writer.writerow(row)
  md_path = os.path.join(sweep_dir, "results.md")
  with open(md_path, "w") as f:
    f.write(markdown)
  return [csv_path, md_path, *_plots(sweep_dir, points, metrics)]


def _plots(sweep_dir: str, points: list[PointResult], metrics: list[str]) -> list[str]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = []
  for m in metrics:
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(points) + 1.5), 3.6))
    xs = range(len(points))
    for x, p in zip(xs, points, strict=True):
      vals = p.values[m]
      if not vals:
        continue
      mean, std = mean_std(vals)
      ax.bar(x, mean, yerr=std if len(vals) > 1 else None, color="#8fb3d9", capsize=4)
      ax.scatter([x] * len(vals), vals, color="#1f3d5c", s=12, zorder=3)
    ax.set_xticks(list(xs), [p.point for p in points], rotation=20, ha="right")
    ax.set_ylabel(m)
    ax.set_title(f"{os.path.basename(sweep_dir)}: {m} (bars: mean ± std, dots: seeds)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(sweep_dir, m.replace("/", "_").replace("@", "at") + ".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
  return paths
