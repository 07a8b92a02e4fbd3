"""Tests of the builders' shared modules: package index, splits, image decoding, report text,
validation and skip accounting.
"""

from __future__ import annotations

import collections
import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline import builders
from data_pipeline.builders.accounting import SkipLedger
from data_pipeline.builders.covid_cxr import Builder as CovidBuilder
from data_pipeline.builders.image_io import load_grayscale_image, target_size
from data_pipeline.builders.report_text import decode_report, require_text
from data_pipeline.builders.splits import assign_split
from data_pipeline.builders.validation import (
  CORRUPT_IMAGE,
  EMPTY_REPORT,
  MISSING_IMAGE,
  NON_UTF8_REPORT,
  SMALL_IMAGE,
  STRICT_ENV_VAR,
  TRUNCATED_IMAGE,
  RecordRejected,
  StrictValidationError,
  resolve_strict,
)
from tests._builder_helpers import REPO, png_bytes


def test_builder_package_index():
  assert builders.builder_dir("covid_cxr") == REPO / "data_pipeline" / "builders" / "covid_cxr"
  for name in builders.BUILDER_NAMES:
    assert (builders.builder_dir(name) / f"{name}_dataset_builder.py").is_file()
  assert builders.builder_class("covid_cxr") is CovidBuilder
  with pytest.raises(ValueError):
    builders.builder_dir("nope")


def test_assign_split_is_deterministic_and_follows_fractions():
  keys = [f"patient-{i}" for i in range(20000)]
  first = [assign_split(k) for k in keys]
  assert first == [assign_split(k) for k in keys]
  shares = collections.Counter(first)
  assert abs(shares["train"] / len(keys) - 0.7) < 0.015
  assert abs(shares["validation"] / len(keys) - 0.1) < 0.015
  assert abs(shares["test"] / len(keys) - 0.2) < 0.015
  # A different salt reshuffles; custom fractions are honoured.
  assert first != [assign_split(k, salt="other") for k in keys]
  halves = collections.Counter(assign_split(k, (("a", 1), ("b", 1))) for k in keys)
  assert abs(halves["a"] / len(keys) - 0.5) < 0.015
  with pytest.raises(ValueError):
    assign_split("x", (("a", -1.0),))


@pytest.mark.parametrize(
  "size,max_side,side,expected",
  [
    ((3000, 2000), 1000, "longer", (1000, 667)),
    ((2000, 3000), 1000, "longer", (667, 1000)),
    ((3000, 2000), 1000, "shorter", (1500, 1000)),
    ((500, 400), 1000, "longer", (500, 400)),  # never enlarged
    ((500, 400), None, "longer", (500, 400)),
    ((4096, 4096), 2048, "longer", (2048, 2048)),
  ],
)
def test_target_size(size, max_side, side, expected):
  assert target_size(size, max_side, side) == expected


def test_load_grayscale_modes_are_converted_deterministically():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
  loaded = load_grayscale_image(png_bytes(rgb))
  luma = (
    rgb[..., 0].astype(np.int64) * 299
    + rgb[..., 1].astype(np.int64) * 587
    + rgb[..., 2].astype(np.int64) * 114
  ) / 1000
  assert loaded.array.shape == (70, 90, 1) and loaded.array.dtype == np.uint8
  assert loaded.original_mode == "RGB" and loaded.converted
  assert np.abs(loaded.array[..., 0].astype(np.float64) - luma).max() <= 1.0

  # RGBA: composited over black, so a half-transparent white pixel becomes ~128.
  rgba = np.zeros((70, 70, 4), np.uint8)
  rgba[..., :3] = 255
  rgba[:, :35, 3] = 255
  rgba[:, 35:, 3] = 128
  gray = load_grayscale_image(png_bytes(rgba)).array[..., 0]
  assert gray[:, :35].min() == 255 and abs(int(gray[0, 50]) - 128) <= 1

  # 16-bit: windowed to its own 0.5-99.5 percentiles; a 12-bit ramp fills 0..255.
  ramp = np.tile(np.linspace(0, 4095, 100).astype(np.uint16), (80, 1))
  deep = load_grayscale_image(png_bytes(ramp))
  assert deep.original_mode.startswith("I")
  assert deep.array.min() == 0 and deep.array.max() == 255
  assert np.all(np.diff(deep.array[0, :, 0].astype(int)) >= 0)  # order preserved
  constant = load_grayscale_image(png_bytes(np.full((70, 70), 900, np.uint16)))
  assert constant.array.max() == 0

  # Grayscale input is passed through unchanged.
  l_img = rng.integers(0, 256, (70, 80), dtype=np.uint8)
  same = load_grayscale_image(png_bytes(l_img))
  assert not same.converted and np.array_equal(same.array[..., 0], l_img)


def test_load_grayscale_resizes_and_rejects(tmp_path):
  big = np.random.default_rng(1).integers(0, 256, (300, 200), dtype=np.uint8)
  resized = load_grayscale_image(png_bytes(big), max_side=64)
  assert resized.array.shape == (64, 43, 1) and resized.original_size == (200, 300)
  shorter = load_grayscale_image(png_bytes(big), max_side=64, resize_side="shorter")
  assert shorter.array.shape == (96, 64, 1)
  # JPEG goes through the DCT draft path and still lands on the exact target size.
  buffer = io.BytesIO()
  Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (600, 3))).save(buffer, "JPEG")
  jpeg = load_grayscale_image(buffer.getvalue(), max_side=100)
  assert jpeg.array.shape == (78, 100, 1)

  def reason(source, **kw):
    with pytest.raises(RecordRejected) as info:
      load_grayscale_image(source, **kw)
    return info.value.reason

  good = png_bytes(big)
  assert reason(tmp_path / "absent.png") == MISSING_IMAGE
  assert reason(b"not an image at all") == CORRUPT_IMAGE
  assert reason(b"") == CORRUPT_IMAGE
  assert reason(good[: len(good) // 2]) == TRUNCATED_IMAGE
  assert reason(good, min_side=201) == SMALL_IMAGE
  assert load_grayscale_image(good, min_side=200).array.shape == (300, 200, 1)


def test_text_validation():
  assert require_text("  a\n\n b\t c ") == "a b c"
  with pytest.raises(RecordRejected, match="empty report"):
    require_text(" \n ")
  with pytest.raises(RecordRejected, match="empty report"):
    require_text(None)
  assert decode_report("\ufeffnormal".encode("utf-8")) == "normal"
  with pytest.raises(RecordRejected) as info:
    decode_report(b"ok \xff\xfe bad")
  assert info.value.reason == NON_UTF8_REPORT
  escaped = b"ok \xff".decode("utf-8", "surrogateescape")
  with pytest.raises(RecordRejected, match="non-UTF-8"):
    require_text(escaped)


def test_strict_resolution(monkeypatch):
  monkeypatch.delenv(STRICT_ENV_VAR, raising=False)
  assert resolve_strict(None) is False
  monkeypatch.setenv(STRICT_ENV_VAR, "1")
  assert resolve_strict(None) is True
  assert resolve_strict(False) is False  # explicit wins
  monkeypatch.setenv(STRICT_ENV_VAR, "maybe")
  with pytest.raises(ValueError):
    resolve_strict(None)


def test_ledger_counts_and_strict_message(capsys):
  ledger = SkipLedger("demo")
  ledger.accept("train")
  ledger.reject("train", EMPTY_REPORT, "k1")
  ledger.reject("train", EMPTY_REPORT, "k2")
  ledger.exclude("train", "lateral view", "k3")
  ledger.note("train", "image converted from mode RGB")
  line = ledger.report("train")
  assert "kept 1" in line and "empty report: 2" in line and "lateral view: 1" in line
  assert line in capsys.readouterr().out
  assert ledger.counts("train")["skipped"] == {"empty report": 2}
  assert ledger.counts("never")["kept"] == 0 and "never" not in ledger.as_dict()

  strict = SkipLedger("demo", strict=True)
  strict.exclude("train", "lateral view", "k")  # policy exclusions never raise
  with pytest.raises(StrictValidationError, match=r"'k9'.*/data/x\.png.*corrupt"):
    strict.reject("train", CORRUPT_IMAGE, "k9", source="/data/x.png")
