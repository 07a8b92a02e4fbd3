"""Base of every builder: image config knobs, strict flag, skip ledger and per-split reports.

TFDS cannot write an empty split: a split with no planned record is left out (listed in
`metadata["empty_splits"]` and printed); a planned split whose records were *all* skipped stops
the build with an error that gives the counts, rather than TFDS's bare assertion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from data_pipeline.builders.accounting import UNASSIGNED, SkipLedger
from data_pipeline.builders.cli_configs import skipped_by_cli_default
from data_pipeline.builders.image_io import RESIZE_SIDES, LoadedImage, load_grayscale_image
from data_pipeline.builders.validation import resolve_strict

__all__ = ["ImageBuilderConfig", "ValidatingBuilder"]


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
    if self.resize_side not in RESIZE_SIDES:
      raise ValueError(f"resize_side must be one of {RESIZE_SIDES}")
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

  def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
    """TFDS's build, except that `tfds build` without a named config builds only the default
    config (`data_pipeline.builders.cli_configs`): the others print one line and are left out."""
    line = skipped_by_cli_default(self)
    if line is not None:
      print(line, flush=True)
      logging.warning(line)
      return
    super().download_and_prepare(*args, **kwargs)

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
