"""Shared helpers of the builder tests (`tests/test_builder*.py`): paths, small files, builds.

Real-data tests read /work/shared/data (via `parents[2] / "shared" / "data"`) and skip cleanly
when it is absent.
"""

from __future__ import annotations

import collections
import csv
import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COVID_DIR = SHARED / "covid_chestxray"
IU_DIR = SHARED / "iu_xray"
TFDS_CLI = [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main"]

tfds.disable_progress_bar()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
  """PNG file bytes of `array` (Pillow mode `mode`, else inferred)."""
  buffer = io.BytesIO()
  image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
  image.save(buffer, "PNG")
  return buffer.getvalue()


def write_png(path: Path, array: np.ndarray) -> Path:
  """Writes `array` as a PNG at `path` (parents created); returns `path`."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(png_bytes(array))
  return path


def prepare(builder, manual_dir: Path | str | None):
  """Runs `download_and_prepare` of `builder` with `manual_dir`; returns the builder."""
  config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
  builder.download_and_prepare(download_config=config)
  return builder


def read_split(builder, split: str) -> list[dict]:
  """Every example of `split`, as numpy, in file order."""
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def record_accounting(builder) -> dict:
  """The per-split skip accounting stored in the dataset's metadata."""
  return builder.info.metadata["record_accounting"]


def total_counts(accounting: dict, kind: str) -> collections.Counter:
  """`kind` counts (`kept`, `skipped`, `excluded` or `notes`) summed over all splits."""
  total: collections.Counter = collections.Counter()
  for counts in accounting.values():
    if kind == "kept":
      total["kept"] += counts["kept"]
    else:
      total.update(counts[kind])
  return total


def run_tfds_cli(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
  """Runs the real `tfds` CLI with `args` from the repository root."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
  return subprocess.run(
    TFDS_CLI + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )


def gz_csv(path: Path, header: list[str], rows: list[list]) -> None:
  """Writes a gzipped CSV with `header` and `rows` at `path`."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  path.write_bytes(gzip.compress(buffer.getvalue().encode()))
