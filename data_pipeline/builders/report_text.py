"""Report text of the builders: UTF-8 decoding, whitespace cleaning and the empty-report check.

Report bytes must be valid UTF-8 (a leading BOM is dropped) or the record is `non-UTF-8
report`. Whitespace runs (including line breaks) are collapsed to single spaces; a report that
is empty after that is `empty report`. De-identification tokens such as `XXXX` are kept.
"""

from __future__ import annotations

import re

from data_pipeline.builders.validation import EMPTY_REPORT, NON_UTF8_REPORT, RecordRejected

__all__ = ["clean_text", "decode_report", "has_undecodable_bytes", "require_text"]

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
