"""Write a few phantoms, their ground truth drawn, and their reports to a folder, for a person.

Command line: `python -m data_pipeline.phantoms --out DIR --n 8`. PIL is imported lazily.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import numpy as np

from data_pipeline.names import CHEXPERT_OBSERVATIONS
from data_pipeline.phantoms.config import DEFAULT_CONFIG, PhantomConfig
from data_pipeline.phantoms.generate import generate_example


def _draw_boxes(image: np.ndarray, findings: Sequence[Mapping]):
  """An RGB copy of `image` with each finding's box and label drawn (a PIL image)."""
  from PIL import Image, ImageDraw

  rgb = Image.fromarray(image[..., 0]).convert("RGB")
  draw = ImageDraw.Draw(rgb)
  size = image.shape[0]
  colours = (
    (255, 64, 64),
    (64, 200, 64),
    (80, 140, 255),
    (255, 200, 0),
    (255, 0, 255),
    (0, 220, 220),
  )
  for i, finding in enumerate(findings):
    y0, x0, y1, x1 = (b * size for b in finding["box"])
    colour = colours[i % len(colours)]
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour)
    draw.text((x0 + 2, max(y0 - 11, 0)), f"{finding['name']} ({finding['region']})", fill=colour)
  return rgb


def write_preview(
  out_dir: str,
  n: int = 8,
  *,
  split: str = "train",
  seed: int = 0,
  config: PhantomConfig = DEFAULT_CONFIG,
  start: int = 0,
) -> list[str]:
  """Write `NNNNN.png` (the image), `NNNNN_boxes.png` (ground truth drawn) and `NNNNN.txt`.

  The text file holds the ids, the report, the labels and the ground-truth findings. Returns the
  written image paths.
  """
  from PIL import Image

  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for index in range(start, start + n):
    example = generate_example(index, split=split, seed=seed, config=config)
    stem = os.path.join(out_dir, f"{index:05d}")
    Image.fromarray(example["image"][..., 0]).save(stem + ".png")
    _draw_boxes(example["image"], example["findings"]).save(stem + "_boxes.png")
    labels = ", ".join(
      f"{name}={value:g}"
      for name, value in zip(CHEXPERT_OBSERVATIONS, example["labels"], strict=True)
      if not np.isnan(value)
    )
    lines = [
      f"study_id: {example['study_id']}",
      f"patient_id: {example['patient_id']}",
      f"FINDINGS: {example['findings_text']}",
      f"IMPRESSION: {example['impression_text']}",
      f"labels: {labels}",
      "ground truth:",
    ]
    for finding in example["findings"]:
      box = ", ".join(f"{b:.3f}" for b in finding["box"])
      lines.append(
        f"  - {finding['name']} | {finding['region']} | box [{box}] | "
        f'{finding["severity_name"]} | "{finding["words"]}"'
      )
    with open(stem + ".txt", "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
    paths.append(stem + ".png")
  return paths


def main(argv: Sequence[str] | None = None) -> None:
  """Command line: write a few phantoms, their ground truth drawn, and their reports to a folder."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder to write PNGs and reports into")
  parser.add_argument("--n", type=int, default=8, help="number of examples")
  parser.add_argument("--start", type=int, default=0, help="index of the first example")
  parser.add_argument("--split", default="train")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--image-size", type=int, default=256)
  args = parser.parse_args(argv)
  config = PhantomConfig(image_size=args.image_size)
  paths = write_preview(
    args.out, args.n, split=args.split, seed=args.seed, config=config, start=args.start
  )
  print(f"wrote {len(paths)} examples to {args.out}")
