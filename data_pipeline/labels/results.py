"""What the labeler returns: status values, one `Mention`, and a report's `LabelResult`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from data_pipeline.names import CHEXPERT_OBSERVATIONS, REGION_INDEX

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
# Mention status -> label value.
STATUS_VALUES: Mapping[str, float] = {
  "positive": POSITIVE,
  "negative": NEGATIVE,
  "uncertain": UNCERTAIN,
}

# The two observations with rules of their own (No Finding: the "other finding" phrases and the
# normal-report rule; Support Devices: never makes a report abnormal).
NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"


@dataclasses.dataclass(frozen=True)
class Mention:
  """One mention of an observation in a report.

  `phrase` is the report text of the mention, widened to whole words; `span` its character
  offsets in the report; `status` one of "positive", "negative", "uncertain"; `sentence` the
  sentence it sits in; `regions` Chest ImaGenome region names, in the standard index order.
  Mentions with observation "No Finding" are CheXpert's "other finding" phrases (emphysema,
  granuloma, ...): a positive or uncertain one means the report is not normal.
  """

  observation: str
  phrase: str
  span: tuple[int, int]
  status: str
  sentence: str
  regions: tuple[str, ...]

  @property
  def value(self) -> float:
    """The status as a label value (1 positive, 0 negative, -1 uncertain)."""
    return STATUS_VALUES[self.status]


@dataclasses.dataclass(frozen=True)
class LabelResult:
  """Labels of one report (float32 [14], CheXpert order, nan = unmentioned) and its mentions."""

  labels: np.ndarray
  mentions: tuple[Mention, ...]

  def as_dict(self) -> dict[str, float]:
    """`{observation: value}` for all 14 observations (nan for unmentioned)."""
    return {obs: float(v) for obs, v in zip(CHEXPERT_OBSERVATIONS, self.labels, strict=True)}

  def finding_regions(self) -> dict[str, tuple[str, ...]]:
    """`{observation: regions}` over positive/uncertain mentions (No Finding excluded).

    An observation appears as soon as one of its mentions is positive or uncertain, even when no
    region could be named for it (empty tuple); regions are in the standard index order.
    """
    acc: dict[str, set] = {}
    for m in self.mentions:
      if m.observation == NO_FINDING or m.status == "negative":
        continue
      acc.setdefault(m.observation, set()).update(m.regions)
    return {
      obs: tuple(sorted(acc[obs], key=REGION_INDEX.__getitem__))
      for obs in CHEXPERT_OBSERVATIONS
      if obs in acc
    }
