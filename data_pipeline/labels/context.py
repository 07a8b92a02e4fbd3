"""Per-report working state: a mention being built and the lookup tables the rules share."""

from __future__ import annotations

import bisect
import dataclasses

from data_pipeline.labels.locations import LOCATION_RE


@dataclasses.dataclass
class RawMention:
  """A mention while it is being built: raw match span, widened span, observation."""

  observation: str
  raw: tuple[int, int]
  start: int
  end: int
  attribute: bool
  non_prefix: bool = False  # the word carries a negating "non" prefix ("nonconsolidating")
  own: tuple[int, int] = (0, 0)  # character range whose place words belong to this mention
  status: str | None = None
  sentence: int = 0
  locations: tuple[tuple[tuple[str | None, str | None], ...], tuple[str, ...]] = ((), ())


class ReportContext:
  """Per-report lookup tables shared by the status and location rules."""

  def __init__(
    self, low, sentences, sent_starts, tok_starts, hard, soft_starts, cues, cue_starts, cue_ends
  ):
    self.low = low
    self.sentences = sentences
    self.sent_starts = sent_starts
    self.tok_starts = tok_starts
    self.hard = hard
    self.hard_starts = [s for s, _ in hard]
    self.hard_ends = sorted(e for _, e in hard)
    self.soft_starts = soft_starts
    self.cues = cues
    self.cue_starts = cue_starts
    self.cue_ends = cue_ends
    self.locations = [(m.start(), m.end(), m.lastgroup) for m in LOCATION_RE.finditer(low)]
    self.loc_starts = [x[0] for x in self.locations]

  def tokens_between(self, a: int, b: int) -> int:
    """Number of word tokens starting in [a, b)."""
    if b <= a:
      return 0
    return bisect.bisect_left(self.tok_starts, b) - bisect.bisect_left(self.tok_starts, a)

  def last_tokens_start(self, a: int, b: int, n: int) -> int:
    """Start of the last `n` tokens of [a, b) (`a` when there are fewer)."""
    i = bisect.bisect_left(self.tok_starts, b) - n
    return max(a, self.tok_starts[i]) if i >= 0 else a

  def first_tokens_end(self, a: int, b: int, n: int) -> int:
    """End of the first `n` tokens of [a, b) (`b` when there are fewer)."""
    i = bisect.bisect_left(self.tok_starts, a) + n
    return min(b, self.tok_starts[i]) if i < len(self.tok_starts) else b

  def location_kinds(self, a: int, b: int) -> list[str]:
    """Names of the location terms lying wholly inside [a, b), in reading order."""
    if b <= a:
      return []
    i = bisect.bisect_left(self.loc_starts, a)
    out = []
    while i < len(self.locations) and self.locations[i][0] < b:
      if self.locations[i][1] <= b:
        out.append(self.locations[i][2])
      i += 1
    return out

  def clause(self, start: int, end: int, sent_s: int, sent_e: int) -> tuple[int, int]:
    """The clause around [start, end): between the nearest hard boundaries inside the sentence."""
    cs = sent_s
    i = bisect.bisect_right(self.hard_ends, start) - 1
    if i >= 0 and self.hard_ends[i] > cs:
      cs = self.hard_ends[i]
    ce = sent_e
    j = bisect.bisect_left(self.hard_starts, end)
    if j < len(self.hard_starts) and self.hard_starts[j] < ce:
      ce = self.hard_starts[j]
    return cs, ce
