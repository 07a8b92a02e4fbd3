"""Image decoding of the builders: any stored image to validated, resized 8-bit grayscale.

Images are decoded with Pillow and turned into 8-bit, single-channel arrays deterministically
(`load_grayscale_image`):

* EXIF orientation is applied first (`ImageOps.exif_transpose`).
* `L` (8-bit gray) is used as is; `1` (bilevel) maps to 0/255.
* `RGB` (and `CMYK`, `YCbCr`, `LAB`, `HSV`, palette `P` without transparency, via RGB)
  uses Pillow's ITU-R 601-2 luma transform `L = R*299/1000 + G*587/1000 + B*114/1000`.
* Modes with transparency (`RGBA`, `LA`, `PA`, `P` with a transparency key) are first
  composited over an opaque **black** background (transparent pixels become 0, i.e. no signal),
  then converted with the luma transform above.
* High bit-depth modes (`I;16`, `I;16B`, `I;16L`, `I;16N`, `I` (32-bit), `F`) are
  windowed to their own 0.5th-99.5th percentile range, linearly mapped onto [0, 255], resized in
  float32 and rounded. When that range is empty the full min..max range is used, and a constant
  image becomes all zeros. (Medical 16-bit PNGs usually carry 10 to 12 significant bits, so a
  fixed `>> 8` would give nearly black images.)
* Images whose shorter side is below `min_side` (measured on the stored file, before resizing)
  are rejected as `image too small`.
* Images are resized, never enlarged, so that the side chosen by `resize_side` (`"longer"`,
  the default, or `"shorter"`) is at most `max_side` (`None` or 0: keep the stored size),
  keeping the aspect ratio, with the Lanczos filter (antialiased windowed sinc, the best of
  Pillow's filters for downsampling). JPEG files are first decoded at the smallest DCT scale
  (`Image.draft`) that is still at least as large as the target size, which keeps decoding
  2-3k px radiographs to a 512 px target cheap without changing what the filter sees by more than
  the DCT's own rounding.

Failures map onto skip reasons: a path that does not exist is `missing image`; a file Pillow
cannot identify or decode is `corrupt image`; a file that ends early is `truncated image`.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import BinaryIO

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageOps

from data_pipeline.builders.validation import (
  CORRUPT_IMAGE,
  MISSING_IMAGE,
  SMALL_IMAGE,
  TRUNCATED_IMAGE,
  RecordRejected,
)

__all__ = ["RESIZE_SIDES", "LoadedImage", "image_feature", "load_grayscale_image", "target_size"]

RESIZE_SIDES = ("longer", "shorter")
"""Accepted values of `resize_side`: the image side that `max_side` bounds."""

_HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclasses.dataclass(frozen=True)
class LoadedImage:
  """A decoded, normalised image."""

  array: np.ndarray  # uint8 [H, W, 1]
  original_mode: str  # Pillow mode of the stored file
  original_size: tuple[int, int]  # (width, height) of the stored file

  @property
  def converted(self) -> bool:
    """Whether the stored mode was not already 8-bit grayscale."""
    return self.original_mode != "L"


def target_size(
  size: tuple[int, int], max_side: int | None, resize_side: str = "longer"
) -> tuple[int, int]:
  """(width, height) after bounding the chosen side by `max_side` (never enlarging)."""
  if resize_side not in RESIZE_SIDES:
    raise ValueError(f"resize_side must be one of {RESIZE_SIDES}, got {resize_side!r}")
  width, height = size
  if not max_side:
    return width, height
  reference = max(width, height) if resize_side == "longer" else min(width, height)
  if reference <= max_side:
    return width, height
  scale = max_side / reference
  return max(1, round(width * scale)), max(1, round(height * scale))


def _is_truncation(error: BaseException) -> bool:
  return isinstance(error, EOFError) or "truncat" in str(error).lower()


def _percentile_window(values: np.ndarray) -> np.ndarray:
  """Maps a high bit-depth array onto float32 [0, 255] (see module docstring)."""
  values = values.astype(np.float64)
  finite = values[np.isfinite(values)]
  if finite.size == 0:
    return np.zeros(values.shape, np.float32)
  lo, hi = np.percentile(finite, [0.5, 99.5])
  if hi <= lo:
    lo, hi = float(finite.min()), float(finite.max())
  if hi <= lo:
    return np.zeros(values.shape, np.float32)
  values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
  return (np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.float32)


def _to_gray(image: Image.Image) -> Image.Image:
  """Converts any Pillow mode to `L` or, for high bit depths, `F` in [0, 255]."""
  mode = image.mode
  if mode == "L":
    return image
  if mode in _HIGH_BIT_MODES:
    return Image.fromarray(_percentile_window(np.asarray(image)), mode="F")
  has_alpha = mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info)
  if has_alpha:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("L")
  if mode in ("1", "RGB"):
    return image.convert("L")
  return image.convert("RGB").convert("L")


def load_grayscale_image(
  source: os.PathLike | str | bytes | BinaryIO,
  *,
  min_side: int = 1,
  max_side: int | None = None,
  resize_side: str = "longer",
) -> LoadedImage:
  """Decodes, validates, converts to 8-bit gray and resizes one image.

  Args:
    source: a path (local or any `etils.epath` path), raw bytes, or a binary file object.
    min_side: smallest accepted shorter side of the stored image.
    max_side: bound on the side chosen by `resize_side` (`None`/0: no resizing).
    resize_side: `"longer"` or `"shorter"`.

  Returns:
    A `LoadedImage` whose `array` is uint8 [H, W, 1].

  Raises:
    RecordRejected: with reason `missing image`, `corrupt image`, `truncated image` or
      `image too small`.
  """
  if resize_side not in RESIZE_SIDES:
    raise ValueError(f"resize_side must be one of {RESIZE_SIDES}, got {resize_side!r}")
  if isinstance(source, (bytes, bytearray)):
    data = bytes(source)
  elif hasattr(source, "read"):
    data = source.read()
  else:
    path = epath.Path(source)
    try:
      data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
      raise RecordRejected(MISSING_IMAGE, f"no file at {path}") from None
  if not data:
    raise RecordRejected(CORRUPT_IMAGE, "empty file")

  try:
    image = Image.open(io.BytesIO(data))
    original_mode, original_size = image.mode, image.size
  except Exception as e:  # Pillow raises many types for undecodable headers.
    raise RecordRejected(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from None

  width, height = original_size
  if min(width, height) < max(1, min_side):
    raise RecordRejected(
      SMALL_IMAGE, f"{width}x{height} px, shorter side below min_side={min_side}"
    )

  try:
    # EXIF orientation swaps width/height for 90-degree rotations.
    orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    rotated = orientation in (5, 6, 7, 8)
    upright_size = (height, width) if rotated else (width, height)
    out_size = target_size(upright_size, max_side, resize_side)
    if out_size != upright_size and image.format == "JPEG":
      image.draft(image.mode, out_size[::-1] if rotated else out_size)
    image.load()
    image = ImageOps.exif_transpose(image)
    gray = _to_gray(image)
    if gray.size != out_size:
      gray = gray.resize(out_size, Image.Resampling.LANCZOS)
  except Exception as e:  # Decoding errors surface at load() with many exception types.
    reason = TRUNCATED_IMAGE if _is_truncation(e) else CORRUPT_IMAGE
    raise RecordRejected(reason, f"{type(e).__name__}: {e}") from None

  array = np.asarray(gray)
  if array.dtype != np.uint8:
    array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
  return LoadedImage(array[:, :, None].copy(), original_mode, original_size)


def image_feature(encoding_format: str = "png", doc: str | None = None) -> tfds.features.Image:
  """The `image` feature of the contract: uint8 [H, W, 1] of any size."""
  return tfds.features.Image(
    shape=(None, None, 1), dtype=np.uint8, encoding_format=encoding_format, doc=doc
  )
