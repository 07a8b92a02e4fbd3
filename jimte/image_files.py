"""Reading X-ray files (PNG, JPEG, 16-bit PNG, DICOM) and in-memory arrays into one image type.

Every reader returns grey levels in [0, 1] at the original resolution with bright = dense
(MONOCHROME2): DICOM MONOCHROME1 is inverted, and the modality and VOI LUT (or window) are applied.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")


class BadImageError(ValueError):
  """An image that cannot be read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class XrayImage:
  """An X-ray at its original resolution: float32 [H, W] in [0, 1], bright = dense."""

  pixels: np.ndarray
  source: str
  pixel_spacing: tuple[float, float] | None = None  # mm (row, col), from DICOM
  metadata: dict = dataclasses.field(default_factory=dict)


def read_xray(path_or_array) -> XrayImage:
  """An `XrayImage` from a file path (PNG / JPEG / 16-bit PNG / DICOM), an array, or itself."""
  if isinstance(path_or_array, XrayImage):
    return path_or_array
  if isinstance(path_or_array, np.ndarray):
    return from_array(path_or_array)
  path = os.fspath(path_or_array)
  if not os.path.isfile(path):
    raise BadImageError(f"{path}: no such image file")
  if path.lower().endswith(DICOM_SUFFIXES) or _has_dicom_preamble(path):
    return _read_dicom(path)
  return _read_raster(path)


def from_array(array: np.ndarray, source: str = "<array>") -> XrayImage:
  """[H, W] or [H, W, 1] grey levels: integers scaled by their dtype's range, floats kept in [0,
  1] (floats outside [0, 1] are an error, not silently clipped)."""
  a = np.asarray(array)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim != 2 or min(a.shape) < 1:
    raise BadImageError(f"{source}: expected a [H, W] or [H, W, 1] image, got shape {a.shape}")
  if np.issubdtype(a.dtype, np.integer):
    bits = np.iinfo(a.dtype).bits
    pixels = a.astype(np.float64) / float(np.iinfo(a.dtype).max)
  elif np.issubdtype(a.dtype, np.floating):
    bits = None
    if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
      raise BadImageError(f"{source}: float images must be finite and in [0, 1]")
    pixels = a
  else:
    raise BadImageError(f"{source}: unsupported pixel dtype {a.dtype}")
  return XrayImage(
    pixels=np.clip(pixels, 0.0, 1.0).astype(np.float32),
    source=source,
    metadata={"bits": bits, "dtype": str(a.dtype)},
  )


def _has_dicom_preamble(path: str) -> bool:
  with open(path, "rb") as f:
    head = f.read(132)
  return len(head) == 132 and head[128:132] == b"DICM"


def _read_raster(path: str) -> XrayImage:
  from PIL import Image

  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.int64)
        a = np.clip(a, 0, 65535).astype(np.uint16)
      else:
        a = np.asarray(im.convert("L"))
  except Exception as e:  # PIL raises several types for unreadable or truncated files
    raise BadImageError(f"{path}: cannot read the image ({e})") from e
  image = from_array(a, source=path)
  return dataclasses.replace(image, metadata={**image.metadata, "mode": mode})


def _read_dicom(path: str) -> XrayImage:
  import pydicom
  from pydicom.pixels import apply_modality_lut, apply_voi_lut

  try:
    ds = pydicom.dcmread(path)
  except Exception as e:
    raise BadImageError(f"{path}: not a readable DICOM file ({e})") from e
  if "PixelData" not in ds:
    raise BadImageError(f"{path}: the DICOM file has no pixel data")
  try:
    raw = ds.pixel_array
  except Exception as e:
    raise BadImageError(f"{path}: cannot decode the DICOM pixel data ({e})") from e
  if raw.ndim != 2:
    raise BadImageError(f"{path}: expected one grey frame, got pixel array shape {raw.shape}")
  values = apply_modality_lut(raw, ds).astype(np.float64)
  window = None
  if "VOILUTSequence" in ds:  # a lookup table: apply it, then span its output range
    values = apply_voi_lut(values, ds).astype(np.float64)
    pixels = (values - values.min()) / max(float(np.ptp(values)), 1e-12)
  elif "WindowCenter" in ds and "WindowWidth" in ds:  # DICOM's linear window (PS3.3 C.11.2.1.2)
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    pixels = np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-12) + 0.5, 0.0, 1.0)
    window = (center, width)
  else:  # no VOI: the stored range
    pixels = (values - values.min()) / max(float(np.ptp(values)), 1e-12)
  photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
  if photometric == "MONOCHROME1":
    pixels = 1.0 - pixels
  spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
  return XrayImage(
    pixels=pixels.astype(np.float32),
    source=path,
    pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
    metadata={
      "bits": int(ds.get("BitsStored", 0)) or None,
      "photometric_interpretation": photometric,
      "window": window,
      "voi_lut": "VOILUTSequence" in ds,
    },
  )


def _first(value) -> float:
  """A DICOM window value, which may be multi-valued (the first is the default)."""
  try:
    return float(value[0])
  except TypeError:
    return float(value)
