"""The pointing game's ceiling on a region grid: how many finding phrases of the config's held-out
phantoms any map of h x w cells can point at (the evaluator's `oracle/pointing_game`, per grid).

A bilinear map peaks at a cell centre, so a box that holds no cell centre (a small nodule on a
coarse grid) is missed whatever the model does. The oracle map is each cell's share of box pixels.

    python benchmarks/grounding_ceiling.py                      # configs/default.py, grids 4..32
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "the config to measure")


def main(argv):
  del argv
  from data_pipeline import phantoms
  from jimte import data as data_lib
  from jimte.evaluate import grounding, maps

  config = _CONFIG.value
  size = config.image_size
  split = phantoms.generate_split(
    config.data.num_eval,
    split="test",
    seed=config.data.seed,
    config=data_lib.phantom_config(config.data),
  )
  masks, names = [], []
  for records in split["findings"]:
    groups: dict[int, list] = {}
    for record in records:
      groups.setdefault(record["group"], []).append(record)
    for group in groups.values():
      masks.append(maps.box_mask([r["box"] for r in group], size, size))
      names.append(group[0]["name"])
  names = np.array(names)
  kinds = sorted(set(names))
  print(f"{len(masks)} finding phrases of {config.data.num_eval} held-out phantoms at {size} px")
  print("| grid | oracle pointing game | " + " | ".join(kinds) + " |")
  print("|---|---|" + "---|" * len(kinds))
  for cells in (4, 8, 16, 32):
    hits = np.array(
      [
        grounding.pointing_hit(
          maps.grid_to_pixels(grounding.box_coverage(m, cells, cells), size, size), m
        )
        for m in masks
      ]
    )
    per_kind = " | ".join(f"{hits[names == k].mean():.2f}" for k in kinds)
    print(f"| {cells} x {cells} | {hits.mean():.3f} | {per_kind} |")


if __name__ == "__main__":
  app.run(main)
