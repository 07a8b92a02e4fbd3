"""Skip accounting of the builders: kept / skipped / excluded / noted records per split, by reason.

The outcomes themselves (what is skipped, excluded or noted, and strict mode) are defined in
`data_pipeline.builders.validation`. Nothing is dropped silently: at the end of every split the
counts are printed to stdout, logged through `absl.logging` and stored in the dataset's
`metadata.json` (`builder.info.metadata["record_accounting"]`, one entry per split plus
`(unassigned)` for records rejected before a split could be chosen), next to
`dataset_info.json`. The first few rejections of each reason are also logged with their key and
file.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any

from absl import logging

from data_pipeline.builders.validation import StrictValidationError

__all__ = ["UNASSIGNED", "SkipLedger"]

UNASSIGNED = "(unassigned)"
"""Pseudo split for records rejected before they could be given a split."""


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
