"""Chest ImaGenome scene graphs -> the 29 region boxes of each image, normalised to the image.

The silver dataset ships one JSON per image, `scene_graph/<dicom_id>_SceneGraph.json`,
with "image_id" (the dicom id) and "objects", each with "bbox_name" and the box in the original
DICOM's pixels ("original_x1", "original_y1", "original_x2", "original_y2") and in a 224 x 224
resize ("x1" ... "y2"). "original_width" / "original_height" are the *box's* size (original_x2 -
original_x1, ...), not the image's: a scene graph carries no image size. So the caller passes
`image_sizes` {dicom_id: (height, width)}, e.g. from MIMIC-CXR's metadata CSV (Rows, Columns:
`image_sizes_from_mimic_metadata`; MIMIC-CXR-JPG keeps the DICOM's resolution). The 224 x 224
coordinates are not used: the file does not say how that resize treated the aspect ratio.

Boxes are float32 [29, 4] normalised [y0, x0, y1, x1] (y down, x right; x / width, y / height,
x2 and y2 taken as the box's far edges) in `data_pipeline.names.CHEST_IMAGENOME_REGIONS` order;
a region the file lacks is a NaN row. Region names are matched lower-cased with single spaces
(underscores and hyphens read as spaces, "superior vena cava" as "svc"); the other names of the
silver set (e.g. "left arm") are ignored and counted. Nothing is dropped silently: see
`SceneGraphDir`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping

import numpy as np
from etils import epath

from data_pipeline.names import CHEST_IMAGENOME_REGIONS, REGION_INDEX

NUM_REGIONS = len(CHEST_IMAGENOME_REGIONS)
SCENE_GRAPH_SUFFIX = "_SceneGraph.json"
COORDINATE_KEYS = ("original_x1", "original_y1", "original_x2", "original_y2")

# Spellings of our region names met in scene graphs and their derivatives (after normalising).
REGION_ALIASES: dict[str, str] = {
  "superior vena cava": "svc",
  "cavo atrial junction": "cavoatrial junction",
  "right hilar structure": "right hilar structures",
  "left hilar structure": "left hilar structures",
}

# Object-level notes (the object is ignored, the rest of the file is kept).
UNKNOWN_REGION = "unknown region name (ignored)"
NO_REGION_NAME = "object without a bbox_name (ignored)"
BAD_COORDINATES = "missing or non-numeric original_* coordinates (region left NaN)"
EMPTY_BOX = "empty box: x2 <= x1 or y2 <= y1 (region left NaN)"
DUPLICATE_REGION = "region given more than once (region left NaN)"
CLIPPED_BOX = "box past the image edge (clipped to the image)"


class SceneGraphError(ValueError):
  """A scene-graph file that cannot be read as a whole; the message names the file."""


class MissingImageSizeError(SceneGraphError):
  """A scene graph whose dicom id `image_sizes` does not hold; the message names the file."""


def normalise_region_name(name: str) -> str:
  """A region name as we spell it: lower case, '_' and '-' as spaces, single spaces, aliases."""
  key = " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())
  return REGION_ALIASES.get(key, key)


def read_scene_graph(
  path: str,
  image_sizes: Mapping[str, tuple[int, int]],
  *,
  notes: collections.Counter | None = None,
  unknown_regions: collections.Counter | None = None,
) -> tuple[str, np.ndarray]:
  """(dicom_id, float32 [29, 4] normalised [y0, x0, y1, x1] boxes, NaN rows where absent) of one
  scene-graph file. `image_sizes[dicom_id]` = (height, width) of the original image (required:
  the file has none). Object-level problems are added to `notes` (and ignored names to
  `unknown_regions`) when given; a file that cannot be read raises `SceneGraphError` naming it."""
  notes = collections.Counter() if notes is None else notes
  unknown_regions = collections.Counter() if unknown_regions is None else unknown_regions
  try:
    with epath.Path(path).open(encoding="utf-8") as f:  # local or GCS
      graph = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise SceneGraphError(f"{path}: not a readable JSON file ({e})") from e
  if not isinstance(graph, dict):
    raise SceneGraphError(f"{path}: expected a JSON object, got {type(graph).__name__}")
  dicom_id = graph.get("image_id")
  if not isinstance(dicom_id, str) or not dicom_id.strip():
    raise SceneGraphError(f"{path}: no 'image_id' (the dicom id)")
  dicom_id = dicom_id.strip()
  objects = graph.get("objects")
  if not isinstance(objects, list):
    raise SceneGraphError(f"{path}: no 'objects' list")
  if dicom_id not in image_sizes:
    raise MissingImageSizeError(
      f"{path}: no image size for dicom id {dicom_id!r} in image_sizes (a scene graph carries "
      "none: its original_width/original_height are the box's size)"
    )
  height, width = (float(v) for v in image_sizes[dicom_id])
  if not (height > 0 and width > 0):
    raise SceneGraphError(
      f"{path}: image size {image_sizes[dicom_id]} of {dicom_id!r} is not positive"
    )

  boxes = np.full((NUM_REGIONS, 4), np.nan, np.float32)
  seen: set[int] = set()
  for item in objects:
    name = item.get("bbox_name") if isinstance(item, dict) else None
    if not isinstance(name, str) or not name.strip():
      notes[NO_REGION_NAME] += 1
      continue
    key = normalise_region_name(name)
    if key not in REGION_INDEX:
      notes[UNKNOWN_REGION] += 1
      unknown_regions[key] += 1
      continue
    region = REGION_INDEX[key]
    if region in seen:
      notes[DUPLICATE_REGION] += 1
      boxes[region] = np.nan
      continue
    seen.add(region)
    box = _original_box(item)
    if box is None:
      notes[BAD_COORDINATES] += 1
      continue
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
      notes[EMPTY_BOX] += 1
      continue
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height))
    if clipped != (x1, y1, x2, y2):
      notes[CLIPPED_BOX] += 1
      x1, y1, x2, y2 = clipped
      if x2 <= x1 or y2 <= y1:  # wholly outside the image
        notes[EMPTY_BOX] += 1
        continue
    boxes[region] = (y1 / height, x1 / width, y2 / height, x2 / width)
  return dicom_id, boxes


def _original_box(item: Mapping) -> tuple[float, float, float, float] | None:
  """(x1, y1, x2, y2) of an object in original pixels, or None where one is missing or not a
  finite number."""
  values = []
  for key in COORDINATE_KEYS:
    value = item.get(key)
    if isinstance(value, bool):
      return None
    try:
      number = float(value)
    except (TypeError, ValueError):
      return None
    if not math.isfinite(number):
      return None
    values.append(number)
  return tuple(values)


@dataclasses.dataclass
class SceneGraphDir:
  """What `read_scene_graph_dir` read and what it left out, and why.

  Attributes:
    boxes: dicom_id -> float32 [29, 4] normalised [y0, x0, y1, x1] (NaN rows: region absent).
    skipped_files: (file, reason) of each file not read.
    missing_dicom_ids: requested ids without a scene-graph file.
    other_files: files of the directory not named `<dicom_id>_SceneGraph.json` (not read).
    object_notes: object-level note -> count (the objects ignored or clipped, module constants).
    unknown_regions: normalised region name -> count, for the names outside our 29.
  """

  boxes: dict[str, np.ndarray]
  skipped_files: list[tuple[str, str]]
  missing_dicom_ids: list[str]
  other_files: int
  object_notes: collections.Counter
  unknown_regions: collections.Counter

  def summary(self) -> str:
    """A few lines: files read and skipped (by reason), objects ignored (by note)."""
    lines = [f"scene graphs read: {len(self.boxes)}, skipped: {len(self.skipped_files)}"]
    reasons = collections.Counter(reason.split(":")[0] for _, reason in self.skipped_files)
    lines += [f"  skipped ({reason}): {n}" for reason, n in sorted(reasons.items())]
    if self.missing_dicom_ids:
      lines.append(f"  requested dicom ids without a file: {len(self.missing_dicom_ids)}")
    if self.other_files:
      lines.append(f"  other files in the directory (not read): {self.other_files}")
    lines += [f"  objects: {note}: {n}" for note, n in sorted(self.object_notes.items())]
    return "\n".join(lines)


# File-level skip reasons (the prefix before ':' of each `skipped_files` reason).
UNREADABLE_FILE = "unreadable scene graph"
NO_IMAGE_SIZE = "no image size"
ID_MISMATCH = "image_id differs from the file name"


def read_scene_graph_dir(
  directory: str,
  dicom_ids: Iterable[str] | None = None,
  *,
  image_sizes: Mapping[str, tuple[int, int]],
) -> SceneGraphDir:
  """The boxes of every `<dicom_id>_SceneGraph.json` of `directory` (or only of `dicom_ids`),
  with each file skipped and why: malformed, no image size for its id, or an "image_id" that
  differs from its file name. Object-level problems are counted, not raised."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no such scene-graph directory")
  names = sorted(os.listdir(directory))
  graph_names = [n for n in names if n.endswith(SCENE_GRAPH_SUFFIX)]
  other_files = len(names) - len(graph_names)
  missing: list[str] = []
  if dicom_ids is not None:
    wanted = list(dict.fromkeys(str(d) for d in dicom_ids))
    present = set(graph_names)
    missing = [d for d in wanted if d + SCENE_GRAPH_SUFFIX not in present]
    graph_names = [d + SCENE_GRAPH_SUFFIX for d in wanted if d + SCENE_GRAPH_SUFFIX in present]
    other_files = 0  # only the requested files are looked at
  result = SceneGraphDir({}, [], missing, other_files, collections.Counter(), collections.Counter())
  for name in graph_names:
    path = os.path.join(directory, name)
    file_id = name[: -len(SCENE_GRAPH_SUFFIX)]
    notes, unknown = collections.Counter(), collections.Counter()
    try:
      dicom_id, boxes = read_scene_graph(path, image_sizes, notes=notes, unknown_regions=unknown)
    except SceneGraphError as e:
      reason = NO_IMAGE_SIZE if isinstance(e, MissingImageSizeError) else UNREADABLE_FILE
      result.skipped_files.append((path, f"{reason}: {e}"))
      continue
    if dicom_id != file_id:
      result.skipped_files.append((path, f"{ID_MISMATCH}: {dicom_id!r}"))
      continue
    result.boxes[dicom_id] = boxes
    result.object_notes.update(notes)
    result.unknown_regions.update(unknown)
  return result


def image_sizes_from_mimic_metadata(csv_path: str) -> dict[str, tuple[int, int]]:
  """{dicom_id: (Rows, Columns)} from MIMIC-CXR's `mimic-cxr-2.0.0-metadata.csv` (or any CSV with
  those three columns): the original image sizes the scene graphs' boxes are in."""
  sizes: dict[str, tuple[int, int]] = {}
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    columns = [c.strip() for c in reader.fieldnames or []]
    for column in ("dicom_id", "Rows", "Columns"):
      if column not in columns:
        raise ValueError(f"{csv_path}: no column {column!r} (columns: {', '.join(columns)})")
    reader.fieldnames = columns
    for line, row in enumerate(reader, start=2):
      try:
        sizes[row["dicom_id"].strip()] = (int(float(row["Rows"])), int(float(row["Columns"])))
      except (TypeError, ValueError) as e:
        raise ValueError(f"{csv_path}:{line}: Rows/Columns are not numbers ({e})") from e
  return sizes
