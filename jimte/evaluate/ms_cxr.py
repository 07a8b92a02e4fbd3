"""MS-CXR phrase grounding (Boecking et al. 2022): does a trained model's map of a phrase peak in,
and stand out over, the radiologist's boxes of that phrase?

MS-CXR is a CSV of one box per row: dicom_id, category, label_text, x, y, w, h (pixels of the
original image, (x, y) the top-left corner), image_width, image_height, split (and path, avg_iou,
...: unused). Rows sharing (dicom_id, category, label_text) are one phrase with several boxes;
`read_ms_cxr` normalises each box to [y0, x0, y1, x1] = [y/H, x/W, (y+h)/H, (x+w)/W] of the
image (a box past the image edge is clipped to it).

Map: for each phrase, the model is given the image and the phrase as its text (offset 0), and
`JimteModel.phrase_maps` returns, in the original image's pixels, the cosine of each region vector
with the phrase vector (the mean of the phrase's L2-normalised word vectors: "similarity", the
default) and, if asked, the word->region attention ("attention"); the maps of
docs/grounding.md, bilinear from the region grid's cell centres.

Metrics, per phrase against the union A of its boxes (Ā: the other pixels), then averaged over
the phrases of each category and over all phrases (as in MS-CXR / BioViL; our exact choices are
those of docs/grounding.md and jimte/evaluate/grounding.py, whose functions compute them here):

- pointing game: 1 if the map's maximum lies in A, else 0. `chance_pointing_game`: the mean area
  fraction of A (a uniformly random point).
- CNR: |mean_A m - mean_Ā m| / sqrt(var_A m + var_Ā m) (0 where both are constant).
- mIoU: the map min-max normalised to [0, 1], thresholded at each of `thresholds` (default
  0.1 ... 0.5), IoU of each mask with A, averaged over the thresholds.

Phrases not scored are counted by reason under `skipped/...`, never dropped silently: no image
file (looked up as `<images>/<path>` when the CSV has a path column, then `<images>/<dicom_id>.png`,
then `.jpg`), an unreadable image, an image whose aspect ratio differs from the CSV's
image_width / image_height by over 1 % (its boxes would not fit; a uniformly resized copy is
fine), or a phrase the tokenised text does not hold (cut by max_len).

  python -m jimte.evaluate.ms_cxr --workdir W --csv MS_CXR.csv --images DIR [--split test]
      [--out metrics.json]
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from jimte.evaluate import grounding, maps

Box = tuple[float, float, float, float]
REQUIRED_COLUMNS = (
  "dicom_id",
  "category",
  "label_text",
  "x",
  "y",
  "w",
  "h",
  "image_width",
  "image_height",
)
IMAGE_SUFFIXES = (".png", ".jpg")
ASPECT_TOLERANCE = 0.01
METRICS = ("pointing_game", "cnr", "miou")

# Skip reasons (keys `skipped/<reason>` of the results).
NO_IMAGE_FILE = "image file missing"
UNREADABLE_IMAGE = "image unreadable"
ASPECT_MISMATCH = "image aspect ratio differs from the CSV's"
PHRASE_NOT_TOKENISED = "phrase not in the tokenised text"
SKIP_REASONS = (NO_IMAGE_FILE, UNREADABLE_IMAGE, ASPECT_MISMATCH, PHRASE_NOT_TOKENISED)


@dataclasses.dataclass(frozen=True)
class GroundingPhrase:
  """One MS-CXR phrase: its image, category, text and boxes (normalised [y0, x0, y1, x1])."""

  dicom_id: str
  category: str
  text: str
  boxes: tuple[Box, ...]
  image_size: tuple[int, int]  # (height, width) of the original image, from the CSV
  split: str | None = None
  path: str | None = None  # the CSV's path column, when it has one


def read_ms_cxr(csv_path: str, split: str | None = None) -> list[GroundingPhrase]:
  """The phrases of an MS-CXR CSV (of one `split` when given), in the order of their first row.
  A missing column, a non-numeric or empty box, or rows of one phrase that disagree on the image
  size or split are errors naming the file (and line)."""
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    columns = [c.strip() for c in reader.fieldnames or []]
    wanted = (*REQUIRED_COLUMNS, "split") if split is not None else REQUIRED_COLUMNS
    for column in wanted:
      if column not in columns:
        raise ValueError(f"{csv_path}: no column {column!r} (columns: {', '.join(columns)})")
    reader.fieldnames = columns
    has_split, has_path = "split" in columns, "path" in columns
    groups: dict[tuple[str, str, str], dict] = {}
    for line, row in enumerate(reader, start=2):
      where = f"{csv_path}:{line}"
      row_split = (row.get("split") or "").strip() if has_split else None
      if split is not None and row_split != split:
        continue
      dicom_id = (row["dicom_id"] or "").strip()
      text = " ".join((row["label_text"] or "").split())
      if not dicom_id or not text:
        raise ValueError(f"{where}: empty dicom_id or label_text")
      x, y, w, h, width, height = (
        _number(row, c, where) for c in ("x", "y", "w", "h", "image_width", "image_height")
      )
      if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise ValueError(f"{where}: image_width/image_height {width} x {height} is not a size")
      if w <= 0 or h <= 0:
        raise ValueError(f"{where}: box w={w}, h={h} is empty")
      y0, x0 = max(y, 0.0) / height, max(x, 0.0) / width
      y1, x1 = min(y + h, height) / height, min(x + w, width) / width
      if y1 <= y0 or x1 <= x0:
        raise ValueError(f"{where}: box ({x}, {y}, {w}, {h}) lies outside the image")
      key = (dicom_id, (row["category"] or "").strip(), text)
      size = (int(height), int(width))
      path = ((row.get("path") or "").strip() or None) if has_path else None
      group = groups.setdefault(
        key, {"boxes": [], "size": size, "split": row_split, "path": path, "line": line}
      )
      for field, value in (("size", size), ("split", row_split)):
        if group[field] != value:
          raise ValueError(
            f"{where}: {field} {value} differs from {group[field]} of the same phrase "
            f"(line {group['line']})"
          )
      group["boxes"].append((y0, x0, y1, x1))
  return [
    GroundingPhrase(
      dicom_id=key[0],
      category=key[1],
      text=key[2],
      boxes=tuple(group["boxes"]),
      image_size=group["size"],
      split=group["split"],
      path=group["path"],
    )
    for key, group in groups.items()
  ]


def _number(row: Mapping[str, str], column: str, where: str) -> float:
  """A finite number from a CSV cell; otherwise an error naming the place and column."""
  try:
    value = float(row[column])
  except (TypeError, ValueError):
    raise ValueError(f"{where}: column {column!r} is not a number ({row[column]!r})") from None
  if not math.isfinite(value):
    raise ValueError(f"{where}: column {column!r} is not finite ({row[column]!r})")
  return value


def find_image(phrase: GroundingPhrase, image_dir: str) -> str | None:
  """The phrase's image file: `<image_dir>/<path>` (the CSV's path column, when given), then
  `<image_dir>/<dicom_id>.png`, then `.jpg`; None when none exists."""
  candidates = [os.path.join(image_dir, phrase.path)] if phrase.path else []
  candidates += [os.path.join(image_dir, phrase.dicom_id + s) for s in IMAGE_SUFFIXES]
  return next((c for c in candidates if os.path.isfile(c)), None)


def score_map(
  heat: np.ndarray, boxes: Sequence[Box], thresholds: Sequence[float]
) -> dict[str, float]:
  """Pointing game, CNR, mIoU and the boxes' area fraction of one [H, W] map against the union
  of normalised [y0, x0, y1, x1] `boxes` laid over the same [H, W] image."""
  inside = maps.box_mask(boxes, *heat.shape)
  return {
    "pointing_game": grounding.pointing_hit(heat, inside),
    "cnr": grounding.contrast_to_noise(heat, inside),
    "miou": grounding.mean_iou(heat, inside, thresholds),
    "box_fraction": float(inside.mean()),
  }


def aggregate(
  categories: Sequence[str], scores: Sequence[Mapping[str, Mapping[str, float]]]
) -> dict[str, float]:
  """Means over phrases of `scores[i][kind][metric]` (phrase i of `categories[i]`): overall
  (`<kind>/<metric>`), per category (`<kind>/<metric>/<category>`) and the mean of the category
  means (`<kind>/<metric>/category_mean`), with phrase counts and the chance pointing game."""
  results: dict[str, float] = {"num_phrases": float(len(scores))}
  if not scores:
    return results
  names = sorted(set(categories))
  chosen = {name: [i for i, c in enumerate(categories) if c == name] for name in names}
  fractions = np.array([next(iter(s.values()))["box_fraction"] for s in scores])
  results["chance_pointing_game"] = float(fractions.mean())
  for name in names:
    results[f"num_phrases/{name}"] = float(len(chosen[name]))
    results[f"chance_pointing_game/{name}"] = float(fractions[chosen[name]].mean())
  for kind in scores[0]:
    for metric in METRICS:
      values = np.array([s[kind][metric] for s in scores])
      results[f"{kind}/{metric}"] = float(values.mean())
      per_category = [float(values[chosen[name]].mean()) for name in names]
      for name, value in zip(names, per_category, strict=True):
        results[f"{kind}/{metric}/{name}"] = value
      results[f"{kind}/{metric}/category_mean"] = float(np.mean(per_category))
  return results


def evaluate_ms_cxr(
  model,
  phrases: Sequence[GroundingPhrase],
  image_dir: str,
  *,
  kinds: Sequence[str] = ("similarity",),
  thresholds: Sequence[float] = grounding.DEFAULT_THRESHOLDS,
) -> dict[str, float]:
  """Pointing game, CNR and mIoU of `model`'s (a `JimteModel`) phrase maps against the MS-CXR
  boxes, per category and overall, with `num_phrases_given` and `skipped/<reason>` counts."""
  from jimte.image_files import BadImageError, read_xray

  for kind in kinds:
    if kind not in grounding.MAP_KINDS:
      raise ValueError(f"unknown map kind {kind!r}; choose from {grounding.MAP_KINDS}")
  skipped = collections.Counter(dict.fromkeys(SKIP_REASONS, 0))
  categories: list[str] = []
  scores: list[dict[str, dict[str, float]]] = []
  by_image: dict[str, list[GroundingPhrase]] = collections.defaultdict(list)
  for phrase in phrases:
    by_image[phrase.dicom_id].append(phrase)
  for group in by_image.values():  # each image is read once, for all its phrases
    path = next((f for f in (find_image(p, image_dir) for p in group) if f is not None), None)
    if path is None:
      skipped[NO_IMAGE_FILE] += len(group)
      continue
    try:
      image = read_xray(path)
    except BadImageError:
      skipped[UNREADABLE_IMAGE] += len(group)
      continue
    height, width = image.pixels.shape
    for phrase in group:
      csv_height, csv_width = phrase.image_size
      if abs((width / height) / (csv_width / csv_height) - 1.0) > ASPECT_TOLERANCE:
        skipped[ASPECT_MISMATCH] += 1
        continue
      try:
        phrase_maps = model.phrase_maps(image, phrase.text, [(phrase.text, 0)])
      except ValueError as e:  # the phrase's words are not all in the tokenised text
        if "not in the tokenised report" not in str(e):
          raise
        skipped[PHRASE_NOT_TOKENISED] += 1
        continue
      scores.append(
        {kind: score_map(getattr(phrase_maps, kind)[0], phrase.boxes, thresholds) for kind in kinds}
      )
      categories.append(phrase.category)
  results = aggregate(categories, scores)
  results["num_phrases_given"] = float(len(phrases))
  for reason, count in sorted(skipped.items()):
    results[f"skipped/{reason}"] = float(count)
  return results


def format_table(results: Mapping[str, float], kind: str = "similarity") -> str:
  """The results as a small text table: one row per category and one for all phrases, then the
  skip counts."""
  names = sorted(k.split("/", 1)[1] for k in results if k.startswith("num_phrases/"))
  width = max([len("all (mean over phrases)"), *map(len, names)])
  lines = [f"{'category':{width}s}  phrases  pointing    CNR   mIoU  chance"]
  rows = [(name, f"/{name}") for name in names] + [("all (mean over phrases)", "")]
  for label, suffix in rows:
    count = int(results.get(f"num_phrases{suffix}", 0.0))
    if f"{kind}/pointing_game{suffix}" not in results:
      lines.append(f"{label:{width}s}  {count:7d}  (none scored)")
      continue
    values = [results[f"{kind}/{m}{suffix}"] for m in METRICS]
    chance = results[f"chance_pointing_game{suffix}"]
    lines.append(
      f"{label:{width}s}  {count:7d}  {values[0]:8.3f}  {values[1]:5.3f}  {values[2]:5.3f}"
      f"  {chance:6.3f}"
    )
  if f"{kind}/pointing_game/category_mean" in results:
    values = [results[f"{kind}/{m}/category_mean"] for m in METRICS]
    label = "mean over categories"
    lines.append(
      f"{label:{width}s}  {len(names):7d}  {values[0]:8.3f}  {values[1]:5.3f}  {values[2]:5.3f}"
    )
  given = int(results.get("num_phrases_given", 0))
  lines.append(f"phrases given: {given}")
  lines += [
    f"skipped ({k.split('/', 1)[1]}): {int(v)}"
    for k, v in sorted(results.items())
    if k.startswith("skipped/")
  ]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """`python -m jimte.evaluate.ms_cxr ...`: evaluate a work dir on MS-CXR, print a table."""
  p = argparse.ArgumentParser(
    prog="python -m jimte.evaluate.ms_cxr", description=__doc__.split("\n")[0]
  )
  p.add_argument("--workdir", required=True, help="the trained work dir")
  p.add_argument("--csv", required=True, help="the MS-CXR CSV (one row per box)")
  p.add_argument("--images", required=True, help="directory of <dicom_id>.png/.jpg (or paths)")
  p.add_argument("--split", default=None, help="only the phrases of this split, e.g. test")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--kind", action="append", choices=grounding.MAP_KINDS, help="map kinds")
  p.add_argument("--out", default=None, help="write the metrics to this JSON file")
  args = p.parse_args(argv)
  kinds = tuple(dict.fromkeys(args.kind or ["similarity"]))
  try:
    phrases = read_ms_cxr(args.csv, split=args.split)
    if not os.path.isdir(args.images):
      raise FileNotFoundError(f"{args.images}: no such image directory")
    from jimte.inference import JimteModel

    model = JimteModel.from_workdir(args.workdir, step=args.step)
    results = evaluate_ms_cxr(model, phrases, args.images, kinds=kinds)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"ms_cxr: {e}", file=sys.stderr)
    return 2
  for kind in kinds:
    print(f"MS-CXR phrase grounding, {kind} maps (step {model.step}):")
    print(format_table(results, kind))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
