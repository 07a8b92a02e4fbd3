"""What a bad source record is, and strict mode: the skip reasons and the errors of the builders.

Every builder in `data_pipeline.builders` turns raw files into records that follow the
Example contract of `docs/contracts.md` (`image` uint8 [H, W, 1], `text`, `study_id`,
`patient_id`). Real archives contain bad records; this module names, in one place, what a
bad record is and what happens to it.

Outcome of a source record
--------------------------
* **kept**: written to the dataset.
* **skipped** (`SkipLedger.reject`): the record is *broken* (unreadable image, empty report,
  duplicate id, ...). The helpers raise `RecordRejected` with one of the reasons below; the
  builder drops the record and counts it by reason. In *strict* mode the build stops instead with
  `StrictValidationError`, whose message names the offending key and file.
* **excluded** (`SkipLedger.exclude`): the record is *valid but out of scope* by policy
  (a lateral view in a frontal-only config, a study outside the R2Gen split, ...). It is
  counted by reason and never raises, not even in strict mode.
* **notes** (`SkipLedger.note`): the record is kept but something was repaired or
  defaulted (an RGB image converted to grayscale, a report without sections used whole, ...).

How the counts are reported: `data_pipeline.builders.accounting`.

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
"""

from __future__ import annotations

import os

__all__ = [
  "CORRUPT_IMAGE",
  "DUPLICATE_ID",
  "DUPLICATE_IMAGE",
  "EMPTY_REPORT",
  "MALFORMED_REPORT",
  "MISSING_IMAGE",
  "MISSING_REPORT",
  "NON_UTF8_REPORT",
  "SMALL_IMAGE",
  "STRICT_ENV_VAR",
  "TRUNCATED_IMAGE",
  "RecordRejected",
  "StrictValidationError",
  "resolve_strict",
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

STRICT_ENV_VAR = "JIMTE_TFDS_STRICT"
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


# ---------------------------------------------------------------------------------------------
# Errors and strictness
# ---------------------------------------------------------------------------------------------
class RecordRejected(Exception):
  """A source record is unusable; raised by the shared helpers and caught by the builders."""

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
