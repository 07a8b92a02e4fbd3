"""Shared record validation, image normalisation and skip accounting for the TFDS builders.

Every builder in `data_pipeline.builders` turns raw files into records that follow the
Example contract of `docs/contracts.md` (`image` uint8 [H, W, 1], `text`, `study_id`,
`patient_id`). Real archives contain bad records; this module decides, in one place, what a
bad record is and what happens to it.

Outcome of a source record
--------------------------
* **kept**: written to the dataset.
* **skipped** (`SkipLedger.reject`): the record is *broken* (unreadable image, empty report,
  duplicate id, ...). It is dropped and counted by reason. In *strict* mode the build stops
  instead with `StrictValidationError`, whose message names the offending key and file.
* **excluded** (`SkipLedger.exclude`): the record is *valid but out of scope* by policy
  (a lateral view in a frontal-only config, a study outside the R2Gen split, ...). It is
  counted by reason and never raises, not even in strict mode.
* **notes** (`SkipLedger.note`): the record is kept but something was repaired or
  defaulted (an RGB image converted to grayscale, a report without sections used whole, ...).

Nothing is dropped silently: at the end of every split the counts are printed to stdout, logged
through `absl.logging` and stored in the dataset's `metadata.json` (`builder.info.metadata
["record_accounting"]`, one entry per split plus `(unassigned)` for records rejected before a
split could be chosen), next to `dataset_info.json`. The first few rejections of each reason are
also logged with their key and file.

TFDS cannot write an empty split: a split with no planned record is left out (listed in
`metadata["empty_splits"]` and printed); a planned split whose records were *all* skipped stops
the build with an error that gives the counts, rather than TFDS's bare assertion.

Strict mode
-----------
Strict mode is not part of a `BuilderConfig` (it never changes the data that a successful build
writes). It is chosen by, in order of precedence:

1. the builder keyword argument `strict=True` / `strict=False`
   (`Builder(data_dir=..., config=..., strict=True)` or `tfds.builder(name, strict=True)`);
2. the environment variable `JIMTE_TFDS_STRICT` (`1`, `true`, `yes` or `on`), which is
   how it is switched on from the CLI: `JIMTE_TFDS_STRICT=1 tfds build data_pipeline/builders/NAME
   --manual_dir DIR --data_dir DIR`. (`tfds build` offers no way to pass builder keyword
   arguments; it only takes `--config NAME` or `--config '{json of BuilderConfig fields}'`.)

Image normalisation (`load_grayscale_image`)
-----------------------------------------------
Images are decoded with Pillow and turned into 8-bit, single-channel arrays deterministically:

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

Text validation (`decode_report`, `clean_text`, `require_text`)
------------------------------------------------------------------------------
Report bytes must be valid UTF-8 (a leading BOM is dropped) or the record is `non-UTF-8
report`. Whitespace runs (including line breaks) are collapsed to single spaces; a report that
is empty after that is `empty report`. De-identification tokens such as `XXXX` are kept.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import hashlib
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image, ImageOps

__all__ = [
  "CORRUPT_IMAGE",
  "DEFAULT_SPLIT_FRACTIONS",
  "DUPLICATE_ID",
  "DUPLICATE_IMAGE",
  "EMPTY_REPORT",
  "MALFORMED_REPORT",
  "MISSING_IMAGE",
  "MISSING_REPORT",
  "NON_UTF8_REPORT",
  "STRICT_ENV_VAR",
  "SMALL_IMAGE",
  "TRUNCATED_IMAGE",
  "UNASSIGNED",
  "ImageBuilderConfig",
  "LoadedImage",
  "RecordRejected",
  "SkipLedger",
  "StrictValidationError",
  "ValidatingBuilder",
  "assign_split",
  "chexpert_vector",
  "clean_text",
  "decode_report",
  "find_first",
  "float_or_nan",
  "has_undecodable_bytes",
  "image_feature",
  "load_grayscale_image",
  "optional_manual_dir",
  "read_csv_rows",
  "read_maybe_gzip",
  "require_text",
  "resolve_strict",
  "target_size",
]

# ---------------------------------------------------------------------------------------------
# Skip reasons (the keys of the per-split Counters). Builders add their own *exclusion* reasons.
# ---------------------------------------------------------------------------------------------
MISSING_IMAGE = "missing image"
CORRUPT_IMAGE = "corrupt image"
TRUNCATED_IMAGE = "truncated image"
SMALL_IMAGE = "image too small"
EMPTY_REPORT = "empty report"
NON_UTF8_REPORT = "non-UTF-8 report"
MALFORMED_REPORT = "malformed report"
MISSING_REPORT = "missing report"
DUPLICATE_ID = "duplicate id"
DUPLICATE_IMAGE = "duplicate image"

# The 14 CheXpert observations in the CheXpert labeler's output order (the order of the
# `labels` vector of the Example contract).
from data_pipeline.names import CHEXPERT_OBSERVATIONS  # noqa: E402

# Default patient-level split: 70 % train, 10 % validation, 20 % test.
DEFAULT_SPLIT_FRACTIONS: tuple[tuple[str, float], ...] = (
  ("train", 0.7),
  ("validation", 0.1),
  ("test", 0.2),
)

STRICT_ENV_VAR = "JIMTE_TFDS_STRICT"
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})

UNASSIGNED = "(unassigned)"
"""Pseudo split for records rejected before they could be given a split."""


# ---------------------------------------------------------------------------------------------
# Errors and strictness
# ---------------------------------------------------------------------------------------------
class RecordRejected(Exception):
  """A source record is unusable; raised by the helpers here and caught by the builders."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


class StrictValidationError(ValueError):
  """Raised in strict mode instead of skipping a bad record."""

  def __init__(self, dataset: str, reason: str, key: str, source: str | None, detail: str):
    where = f" (file {source})" if source else ""
    extra = f": {detail}" if detail else ""
    super().__init__(
      f"[{dataset}] strict mode: record {key!r}{where} rejected, reason '{reason}'{extra}. "
      f"Fix or remove the record, or build without strict mode (unset {STRICT_ENV_VAR}) "
      "to skip and count such records."
    )
    self.dataset = dataset
    self.reason = reason
    self.key = key
    self.source = source
    self.detail = detail


def resolve_strict(explicit: bool | None) -> bool:
  """Returns the effective strict flag: `explicit` if given, else `$JIMTE_TFDS_STRICT`."""
  if explicit is not None:
    return bool(explicit)
  raw = os.environ.get(STRICT_ENV_VAR, "").strip().lower()
  if raw in _TRUE_WORDS:
    return True
  if raw in _FALSE_WORDS:
    return False
  raise ValueError(
    f"{STRICT_ENV_VAR}={raw!r} is not a boolean; use one of "
    f"{sorted(_TRUE_WORDS | _FALSE_WORDS - {''})}."
  )


# ---------------------------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _SplitCounts:
  kept: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  excluded: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def as_dict(self) -> dict[str, Any]:
    return {
      "kept": self.kept,
      "skipped": dict(sorted(self.skipped.items())),
      "excluded": dict(sorted(self.excluded.items())),
      "notes": dict(sorted(self.notes.items())),
    }


class SkipLedger:
  """Counts kept / skipped / excluded records per split, by reason.

  Args:
    dataset: dataset name used in messages.
    strict: when True, `reject` raises `StrictValidationError` instead of counting.
    log_examples: how many individual rejections per reason are logged with their key and
      file (the rest are only counted), to keep logs readable on large archives.
  """

  def __init__(self, dataset: str, *, strict: bool = False, log_examples: int = 5):
    self.dataset = dataset
    self.strict = strict
    self.log_examples = log_examples
    self._splits: dict[str, _SplitCounts] = collections.defaultdict(_SplitCounts)
    self._logged: collections.Counter = collections.Counter()

  # -- recording -----------------------------------------------------------------------------
  def accept(self, split: str) -> None:
    self._splits[split].kept += 1

  def reject(
    self,
    split: str | None,
    reason: str,
    key: str,
    *,
    source: os.PathLike | str | None = None,
    detail: str = "",
  ) -> None:
    """Records a broken record (raises in strict mode)."""
    source_str = os.fspath(source) if source is not None else None
    if self.strict:
      raise StrictValidationError(self.dataset, reason, key, source_str, detail)
    self._splits[split or UNASSIGNED].skipped[reason] += 1
    if self._logged[reason] < self.log_examples:
      self._logged[reason] += 1
      logging.warning(
        "[%s] skipping %r%s: %s%s",
        self.dataset,
        key,
        f" ({source_str})" if source_str else "",
        reason,
        f" ({detail})" if detail else "",
      )

  def exclude(self, split: str | None, reason: str, key: str) -> None:
    """Records a valid record left out by policy (never raises)."""
    del key  # Exclusions are only counted.
    self._splits[split or UNASSIGNED].excluded[reason] += 1

  def note(self, split: str | None, what: str) -> None:
    """Records a repair or default applied to a kept record."""
    self._splits[split or UNASSIGNED].notes[what] += 1

  # -- reading -------------------------------------------------------------------------------
  def counts(self, split: str) -> dict[str, Any]:
    """Counts of one split (all zero if nothing was recorded for it)."""
    return self._splits.get(split, _SplitCounts()).as_dict()

  def as_dict(self) -> dict[str, dict[str, Any]]:
    return {name: counts.as_dict() for name, counts in sorted(self._splits.items())}

  def totals(self) -> dict[str, Any]:
    total = _SplitCounts()
    for counts in self._splits.values():
      total.kept += counts.kept
      total.skipped.update(counts.skipped)
      total.excluded.update(counts.excluded)
      total.notes.update(counts.notes)
    return total.as_dict()

  def summary(self, split: str) -> str:
    counts = self._splits.get(split, _SplitCounts())
    return f"[{self.dataset}] split '{split}': " + _format_counts(counts)

  def report(self, split: str) -> str:
    """Prints and logs the summary line of `split`; returns it."""
    line = self.summary(split)
    print(line, flush=True)
    logging.info(line)
    return line


def _format_counts(counts: _SplitCounts) -> str:
  def fmt(counter: collections.Counter) -> str:
    total = sum(counter.values())
    if not total:
      return "0"
    inner = ", ".join(f"{reason}: {n}" for reason, n in sorted(counter.items()))
    return f"{total} ({inner})"

  text = f"kept {counts.kept}, skipped {fmt(counts.skipped)}, excluded {fmt(counts.excluded)}"
  if counts.notes:
    text += f", notes {fmt(counts.notes)}"
  return text


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def assign_split(
  group_key: str,
  fractions: Sequence[tuple[str, float]] = DEFAULT_SPLIT_FRACTIONS,
  *,
  salt: str = "jimte",
) -> str:
  """Deterministically maps a patient (or patient group) to a split.

  The first 8 bytes of `sha256(salt + "\\0" + group_key)` give a number `u` uniform in
  [0, 1); the split is the first one whose cumulative fraction exceeds `u`. The result does
  not depend on the Python hash seed, the platform, or which other patients exist, so adding
  data never moves a patient to another split.
  """
  total = float(sum(f for _, f in fractions))
  if not fractions or total <= 0 or any(f < 0 for _, f in fractions):
    raise ValueError(f"Invalid split fractions: {fractions!r}")
  digest = hashlib.sha256(f"{salt}\0{group_key}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  cumulative = 0.0
  for name, fraction in fractions:
    cumulative += fraction / total
    if u < cumulative:
      return name
  return fractions[-1][0]


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------
_WHITESPACE = re.compile(r"\s+")
_SURROGATE_ESCAPE = re.compile("[\udc80-\udcff]")


def decode_report(raw: bytes) -> str:
  """Decodes report bytes as UTF-8 (BOM dropped) or raises `non-UTF-8 report`."""
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise RecordRejected(
      NON_UTF8_REPORT, f"invalid byte {raw[e.start : e.start + 1]!r} at offset {e.start}"
    ) from None


def has_undecodable_bytes(text: str) -> bool:
  """True if `text` came from `bytes.decode('utf-8', 'surrogateescape')` of bad bytes."""
  return bool(_SURROGATE_ESCAPE.search(text))


def clean_text(text: str | None) -> str:
  """Collapses whitespace runs to single spaces and strips the ends ('' for None)."""
  if not text:
    return ""
  return _WHITESPACE.sub(" ", text).strip()


def require_text(text: str | None, *, what: str = "report") -> str:
  """Returns `clean_text` of `text`; raises `empty report` / `non-UTF-8 report`."""
  if text is not None and has_undecodable_bytes(text):
    raise RecordRejected(NON_UTF8_REPORT, f"{what} holds bytes that are not UTF-8")
  cleaned = clean_text(text)
  if not cleaned:
    raise RecordRejected(EMPTY_REPORT, f"{what} is empty")
  return cleaned


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
_HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_RESIZE_SIDES = ("longer", "shorter")


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
  if resize_side not in _RESIZE_SIDES:
    raise ValueError(f"resize_side must be one of {_RESIZE_SIDES}, got {resize_side!r}")
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
  if resize_side not in _RESIZE_SIDES:
    raise ValueError(f"resize_side must be one of {_RESIZE_SIDES}, got {resize_side!r}")
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


# ---------------------------------------------------------------------------------------------
# Builder plumbing
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class ImageBuilderConfig(tfds.core.BuilderConfig):
  """Image knobs shared by the builders (custom configs from the CLI: `--config '{json}'`).

  Attributes:
    max_side: bound (px) on the `resize_side` of stored images; `None` or 0 keeps the
      original size. The paper trains at 2048.
    min_side: images whose shorter side is below this are skipped as `image too small`.
    resize_side: `"longer"` (the whole image fits in `max_side` x `max_side`) or
      `"shorter"` (the shorter side is bounded; for later centre crops).
    image_encoding: `"png"` (lossless) or `"jpeg"` for the stored images.
  """

  max_side: int | None = 2048
  min_side: int = 64
  resize_side: str = "longer"
  image_encoding: str = "png"

  def __post_init__(self):
    if self.max_side is not None and self.max_side < 0:
      raise ValueError(f"max_side must be >= 0 or None, got {self.max_side}")
    if self.min_side < 1:
      raise ValueError(f"min_side must be >= 1, got {self.min_side}")
    if self.resize_side not in _RESIZE_SIDES:
      raise ValueError(f"resize_side must be one of {_RESIZE_SIDES}")
    if self.image_encoding not in ("png", "jpeg"):
      raise ValueError("image_encoding must be 'png' or 'jpeg'")


class ValidatingBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class of the builders: strict flag, a `SkipLedger`, per-split reports.

  Subclasses create `self.ledger` with `_new_ledger` at the start of
  `_split_generators`, return generators only for `_non_empty_splits`, and call
  `_finish_split` at the end of each split generator (in a `finally` block, so truncated
  generation, e.g. `--max_examples_per_split`, still reports) followed by
  `_check_split_nonempty` after a complete pass.
  """

  def __init__(self, *, strict: bool | None = None, **kwargs: Any):
    self._strict = resolve_strict(strict)
    super().__init__(**kwargs)
    # DatasetBuilder pickles itself as `__init__(**_original_state)`; keep `strict` there.
    self._original_state = dict(self._original_state, strict=strict)
    self.ledger = SkipLedger(self.name, strict=self._strict)

  @property
  def strict(self) -> bool:
    return self._strict

  def _new_ledger(self) -> SkipLedger:
    self.ledger = SkipLedger(self.name, strict=self._strict)
    return self.ledger

  def _load_image(self, source: Any) -> LoadedImage:
    config = self.builder_config
    return load_grayscale_image(
      source,
      min_side=config.min_side,
      max_side=config.max_side,
      resize_side=config.resize_side,
    )

  def _report_unassigned(self) -> None:
    """Prints the counts of records rejected before split assignment, if any."""
    counts = self.ledger.counts(UNASSIGNED)
    if counts["kept"] or counts["skipped"] or counts["excluded"] or counts["notes"]:
      self.ledger.report(UNASSIGNED)
      self._store_accounting()

  def _finish_split(self, split: str) -> None:
    self.ledger.report(split)
    self._store_accounting()

  def _check_split_nonempty(self, split: str) -> None:
    """Raises a clear error when every planned record of `split` was skipped.

    TFDS cannot write an empty split; without this check it fails with a bare
    "No examples were yielded". Called after a split generator ran to completion.
    """
    counts = self.ledger.counts(split)
    if counts["kept"] == 0:
      raise ValueError(
        f"[{self.name}] split '{split}': every planned record was skipped "
        f"({counts['skipped']}); TFDS cannot write an empty split. Fix the data, or "
        "change the split fractions so that this split is not planned."
      )

  def _non_empty_splits(self, planned: Mapping[str, list]) -> dict[str, list]:
    """Drops (and reports) splits with no planned record: TFDS cannot write them."""
    kept = {name: rows for name, rows in planned.items() if rows}
    empty = [name for name, rows in planned.items() if not rows]
    if empty:
      line = f"[{self.name}] no record planned for split(s) {', '.join(empty)}: not written"
      print(line, flush=True)
      logging.warning(line)
      if self.info.metadata is not None:
        self.info.metadata["empty_splits"] = empty
    if not kept:
      raise ValueError(
        f"[{self.name}] no usable record at all; see the counts above ({self.ledger.totals()})."
      )
    return kept

  def _store_accounting(self) -> None:
    metadata = self.info.metadata
    if metadata is not None:
      metadata["record_accounting"] = self.ledger.as_dict()
      metadata["strict"] = self._strict


def read_csv_rows(raw: bytes) -> Iterable[dict[str, str]]:
  """Parses CSV bytes into dict rows; bytes that are not UTF-8 survive as surrogate escapes.

  This lets one bad field be detected per record (with `has_undecodable_bytes`) instead
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
