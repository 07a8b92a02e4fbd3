"""`ReportLabeler`: report text -> mentions with a status and regions -> the 14 CheXpert labels.

It finds the mentions (phrase lists), decides each one's status from the cues around it, hands
them to the location rules, and aggregates; the rules are specified in docs/labeler.md.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from data_pipeline.labels.context import RawMention, ReportContext
from data_pipeline.labels.cues import (
  CLAUSE,
  CUE_SPECS,
  GAP_BLOCK,
  GAP_VERB,
  NEG,
  PRE_CLAUSE_MAX_TOKENS,
  UNC,
  Cue,
  CueSpec,
  ends_clause,
)
from data_pipeline.labels.locations import locate, mention_regions
from data_pipeline.labels.phrases import (
  EXTRA_UNMENTIONS,
  alternation,
  default_phrases_dir,
  load_phrase_lists,
  unmention_alternation,
)
from data_pipeline.labels.results import (
  NO_FINDING,
  POSITIVE,
  STATUS_VALUES,
  SUPPORT_DEVICES,
  LabelResult,
  Mention,
)
from data_pipeline.labels.sentences import HARD_BOUNDARY, SOFT_BOUNDARY, WORD, split_sentences
from data_pipeline.names import CHEXPERT_INDEX, CHEXPERT_OBSERVATIONS

_ABNORMAL_PHRASE = re.compile(r"megal|enlarg|widen")
_NON_PREFIX = re.compile(r"(?<![a-z])non-?$")


def _lower_same_length(text: str) -> str:
  """`text.lower()`, keeping character offsets even where Unicode lower-casing changes lengths."""
  low = text.lower()
  if len(low) == len(text):
    return low
  return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


class ReportLabeler:
  """CheXpert-style labeler with anatomical regions; the rules are in docs/labeler.md.

  `phrases_dir` is the `labelers/chexpert/phrases` directory (default:
  `default_phrases_dir()`). All regexes are compiled once here; labeling is pure Python and fast
  (thousands of reports/s).
  """

  def __init__(self, phrases_dir: str | os.PathLike | None = None):
    mentions, unmentions = load_phrase_lists(phrases_dir)
    self.phrases_dir = Path(phrases_dir) if phrases_dir is not None else default_phrases_dir()
    self.mention_phrases: dict[str, tuple[str, ...]] = mentions
    self.unmention_phrases: dict[str, tuple[str, ...]] = {
      obs: tuple(unmentions.get(obs, ())) + EXTRA_UNMENTIONS.get(obs, ())
      for obs in CHEXPERT_OBSERVATIONS
    }
    self._mention_re = {obs: alternation(p) for obs, p in mentions.items()}
    # The first word of every phrase: an observation none of whose first words occurs is skipped.
    self._mention_needles = {
      obs: tuple({re.split(r"[\s_]+", p.strip("_ "))[0] for p in phrases if p.strip("_ ")})
      for obs, phrases in mentions.items()
    }
    self._unmention_re = {
      obs: unmention_alternation(p) for obs, p in self.unmention_phrases.items()
    }
    # Cues: one alternation per spec, matched over the whole report.
    self._cue_res = [(re.compile(spec.pattern), spec) for spec in CUE_SPECS]

  # ---------------------------------------------------------------- public API
  def label(self, text: str | None) -> LabelResult:
    """Label one report: 14 values (nan/1/0/-1) and every mention with status and regions."""
    text = "" if text is None else str(text)
    labels = np.full(len(CHEXPERT_OBSERVATIONS), np.nan, dtype=np.float32)
    if not text.strip():
      return LabelResult(labels, ())
    low = _lower_same_length(text)
    sentences = split_sentences(text)
    sent_starts = [s for s, _ in sentences]
    tok_starts = [m.start() for m in WORD.finditer(low)]
    hard = [(m.start(), m.end()) for m in HARD_BOUNDARY.finditer(low)]
    soft_starts = [m.start() for m in SOFT_BOUNDARY.finditer(low)]
    cues = self._find_cues(low)
    cue_ends = [c.end for c in cues]
    cue_starts = [c.start for c in cues]
    raws = self._find_mentions(low)

    ctx = ReportContext(
      low, sentences, sent_starts, tok_starts, hard, soft_starts, cues, cue_starts, cue_ends
    )
    kept: list[RawMention] = []
    for r in raws:
      r.sentence = max(0, bisect.bisect_right(sent_starts, r.start) - 1)
      r.status = self._status(r, ctx)
      if r.status is not None:
        kept.append(r)
    locate(kept, ctx)

    mentions = []
    for r in kept:
      s, e = sentences[r.sentence]
      mentions.append(
        Mention(
          observation=r.observation,
          phrase=text[r.start : r.end],
          span=(r.start, r.end),
          status=r.status,
          sentence=text[s:e],
          regions=mention_regions(r, low),
        )
      )
    return LabelResult(self._aggregate(mentions, labels), tuple(mentions))

  def label_many(self, texts: Iterable[str | None]) -> np.ndarray:
    """Labels of many reports as a float32 array [N, 14]."""
    rows = [self.label(t).labels for t in texts]
    if not rows:
      return np.zeros((0, len(CHEXPERT_OBSERVATIONS)), dtype=np.float32)
    return np.stack(rows).astype(np.float32, copy=False)

  def finding_regions(self, text: str | None) -> dict[str, tuple[str, ...]]:
    """`{observation: Chest ImaGenome regions}` of the positive/uncertain findings of a report."""
    return self.label(text).finding_regions()

  # ---------------------------------------------------------------- mentions
  def _find_mentions(self, low: str) -> list[RawMention]:
    """All mentions not inside an unmention phrase or inside a longer mention of another
    observation."""
    found: list[RawMention] = []
    for obs in CHEXPERT_OBSERVATIONS:
      rx = self._mention_re[obs]
      if rx is None or not any(n in low for n in self._mention_needles[obs]):
        continue
      matches = [(m.start(), m.end()) for m in rx.finditer(low) if m.end() > m.start()]
      if not matches:
        continue
      urx = self._unmention_re[obs]
      if urx is not None:
        # Overlap, not containment: "nodule" in "calcified nodules" overlaps "calcified nodul".
        blocked = [(m.start(), m.end()) for m in urx.finditer(low)]
        matches = [(s, e) for s, e in matches if not any(bs < e and s < be for bs, be in blocked)]
      for s, e in matches:
        ws, we = s, e
        while ws > 0 and low[ws - 1].isalnum():
          ws -= 1
        while we < len(low) and low[we].isalnum():
          we += 1
        attribute = obs in (
          "Cardiomegaly",
          "Enlarged Cardiomediastinum",
        ) and not _ABNORMAL_PHRASE.search(low[ws:we])
        non_prefix = _NON_PREFIX.search(low, max(0, s - 5), s) is not None
        found.append(RawMention(obs, (s, e), ws, we, attribute, non_prefix))
    # Containment: a finding inside a strictly longer finding of another observation is dropped
    # ("contour" inside "cardiac contour"); an "other finding" (No Finding list) is dropped when
    # it lies inside any finding ("density" inside "nodular density"), never the reverse.
    keep = []
    for a in found:
      drop = False
      for b in found:
        if b is a or b.observation == a.observation:
          continue
        inside = b.raw[0] <= a.raw[0] and a.raw[1] <= b.raw[1]
        if not inside:
          continue
        if (
          a.observation == NO_FINDING
          and b.observation != NO_FINDING
          or b.observation != NO_FINDING
          and (b.raw[1] - b.raw[0]) > (a.raw[1] - a.raw[0])
        ):
          drop = True
        if drop:
          break
      if not drop:
        keep.append(a)
    keep.sort(key=lambda r: (r.start, r.end, CHEXPERT_INDEX[r.observation]))
    return keep

  # ---------------------------------------------------------------- cues and status
  def _find_cues(self, low: str) -> list[Cue]:
    """All cue occurrences, overlaps resolved: the longer cue wins, then the higher priority."""
    cand = []
    for rx, spec in self._cue_res:
      if spec.needles and not any(n in low for n in spec.needles):
        continue
      for m in rx.finditer(low):
        if m.end() > m.start():
          cand.append(Cue(m.start(), m.end(), spec))
    cand.sort(key=lambda c: (-(c.end - c.start), -c.spec.priority, c.start))
    taken: list[tuple[int, int]] = []
    out = []
    for c in cand:
      if any(c.start < e and s < c.end for s, e in taken):
        continue
      taken.append((c.start, c.end))
      out.append(c)
    out.sort(key=lambda c: c.start)
    return out

  def _status(self, r: RawMention, ctx: ReportContext) -> str | None:
    """Status of one mention from its pre- and post-cues; None drops an unqualified attribute."""
    if r.non_prefix:
      return "negative"
    sent_s, sent_e = ctx.sentences[r.sentence] if ctx.sentences else (0, len(ctx.low))
    clause_s, clause_e = ctx.clause(r.start, r.end, sent_s, sent_e)
    pre, pre_modifier = self._pre_cue(r, ctx, clause_s)
    post, hedged = self._post_cue(r, ctx, clause_e)
    if r.attribute and not any(
      c is not None and c.spec.qualifier for c in (pre, pre_modifier, post)
    ):
      return None  # "stable heart size", "limited assessment of heart size": says nothing
    pre_kind = pre.spec.kind if pre else None
    post_kind = post.spec.kind if post else None
    if post_kind == UNC or pre_kind == UNC:
      return "uncertain"
    if post_kind == NEG or pre_kind == NEG:
      return "negative"
    if r.attribute and hedged:
      return "uncertain"  # "heart size may be enlarged"
    return "positive"

  @staticmethod
  def _applies(spec: CueSpec, r: RawMention) -> bool:
    return r.attribute or not spec.attribute_only

  def _pre_cue(
    self, r: RawMention, ctx: ReportContext, clause_s: int
  ) -> tuple[Cue | None, Cue | None]:
    """The governing cue before the mention (nearest wins; modifiers never lift a negation).

    Returns `(governing cue, modifier)`: the modifier is the modifier-like cue that a negation
    further back overrode ("enlargement" in "no enlargement of the heart"), else None.
    """
    soft = bisect.bisect_left(ctx.soft_starts, r.start) - 1
    scope_s = clause_s
    if soft >= 0 and ctx.soft_starts[soft] >= clause_s:
      scope_s = ctx.soft_starts[soft]
    # Cues never overlap, so sorted by start they are sorted by end too.
    i = bisect.bisect_right(ctx.cue_ends, r.start) - 1
    held: Cue | None = None  # a modifier-like cue, waiting to see if a negation encloses it
    while i >= 0:
      c = ctx.cues[i]
      i -= 1
      if c.start < clause_s:
        break
      spec = c.spec
      if spec.pre is None or not self._applies(spec, r):
        continue
      gap_tokens = ctx.tokens_between(c.end, r.start)
      if spec.pre == CLAUSE:
        if c.start < scope_s or gap_tokens > PRE_CLAUSE_MAX_TOKENS:
          continue
      elif gap_tokens > spec.pre or "," in ctx.low[c.end : r.start]:
        continue
      if held is not None:
        # "no ... suspicious opacity", "no enlargement of the heart": the negation wins; an
        # overriding cue further back ends the search; further modifiers are skipped.
        if spec.kind == NEG:
          return c, held
        if spec.overrides_neg:
          return held, None
        continue
      if not spec.overrides_neg:
        held = c
        continue
      return c, None
    return held, None

  def _post_cue(self, r: RawMention, ctx: ReportContext, clause_e: int) -> tuple[Cue | None, bool]:
    """The first cue after the mention if it is a post-cue within reach; plus a hedge flag.

    Attribute mentions look past pre-only uncertainty words ("heart size may be enlarged"),
    remembering the hedge so that an enlargement becomes uncertain.
    """
    i = bisect.bisect_left(ctx.cue_starts, r.end)
    hedged = False
    while i < len(ctx.cues):
      c = ctx.cues[i]
      i += 1
      if c.start >= clause_e:
        break
      spec = c.spec
      if not self._applies(spec, r):
        continue
      if spec.post is None:
        if r.attribute and spec.kind == UNC:
          hedged = True
          continue
        break
      gap = ctx.low[r.end : c.start]
      if ctx.tokens_between(r.end, c.start) > spec.post:
        break
      if GAP_BLOCK.search(gap):
        break
      if "," in gap:
        before_comma = gap[: gap.rfind(",")]
        if GAP_VERB.search(before_comma):
          break
      if spec.post_needs_end and not ends_clause(ctx.low, c.end, clause_e):
        break
      return c, hedged
    return None, hedged

  # ---------------------------------------------------------------- locations

  # ---------------------------------------------------------------- aggregation
  @staticmethod
  def _aggregate(mentions: Sequence[Mention], labels: np.ndarray) -> np.ndarray:
    """CheXpert aggregation: positive > uncertain > negative; chf rule; No Finding rule."""
    rank = {"negative": 0, "uncertain": 1, "positive": 2}
    best: dict[str, str] = {}

    def vote(obs: str, status: str) -> None:
      if obs not in best or rank[status] > rank[best[obs]]:
        best[obs] = status

    abnormal = False
    for m in mentions:
      if m.status != "negative" and m.observation != SUPPORT_DEVICES:
        abnormal = True
      if m.observation == NO_FINDING:
        continue
      vote(m.observation, m.status)
      if (
        m.observation == "Edema"
        and m.status != "negative"
        and re.fullmatch(r"chf|heart\s+failure", m.phrase.lower())
      ):
        vote("Cardiomegaly", "uncertain")
    for obs, status in best.items():
      labels[CHEXPERT_INDEX[obs]] = STATUS_VALUES[status]
    if not abnormal:
      labels[CHEXPERT_INDEX[NO_FINDING]] = POSITIVE
    return labels
