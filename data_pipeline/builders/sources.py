"""Reading the builders' raw source files: locating them, gunzipping, CSV rows and CSV cells."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipeline.names import CHEXPERT_OBSERVATIONS

__all__ = [
  "chexpert_vector",
  "find_first",
  "float_or_nan",
  "optional_manual_dir",
  "read_csv_rows",
  "read_maybe_gzip",
]


def read_csv_rows(raw: bytes) -> Iterable[dict[str, str]]:
  """Parses CSV bytes into dict rows; bytes that are not UTF-8 survive as surrogate escapes.

  This lets one bad field be detected per record (with `report_text.has_undecodable_bytes`) instead
  of failing the whole file.
  """
  text = raw.decode("utf-8-sig", errors="surrogateescape")
  yield from csv.DictReader(io.StringIO(text, newline=""))


def read_maybe_gzip(path: epath.Path) -> bytes:
  """Bytes of `path`, gunzipped when it ends in `.gz`."""
  data = path.read_bytes()
  return gzip.decompress(data) if path.name.endswith(".gz") else data


def find_first(root: epath.Path, names: Sequence[str]) -> epath.Path | None:
  """The first of `root / name` that exists, or None."""
  for name in names:
    candidate = root / name
    if candidate.exists():
      return candidate
  return None


def optional_manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
  """`dl_manager.manual_dir` when one was given and is non-empty, else None."""
  try:
    return epath.Path(dl_manager.manual_dir)
  except (AssertionError, ValueError):
    return None


def float_or_nan(value: str | None) -> float:
  """Parses a CSV cell into float; blank or unparsable cells become NaN."""
  if value is None:
    return float("nan")
  value = value.strip()
  if not value:
    return float("nan")
  try:
    return float(value)
  except ValueError:
    return float("nan")


def chexpert_vector(row: Mapping[str, str] | None) -> np.ndarray:
  """float32 [14] in `CHEXPERT_OBSERVATIONS` order (NaN for blank / absent)."""
  if row is None:
    return np.full((len(CHEXPERT_OBSERVATIONS),), np.nan, np.float32)
  return np.array([float_or_nan(row.get(name)) for name in CHEXPERT_OBSERVATIONS], dtype=np.float32)
