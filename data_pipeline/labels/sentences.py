"""Sentences, word tokens and clause boundaries of a report: the units the cue scopes live in."""

from __future__ import annotations

import re

_SENT_END = re.compile(r"[.!?]+(?=\s|$)|\n[ \t]*\n")
_ABBREVIATIONS = frozenset(
  {"vs", "e.g", "i.e", "approx", "dr", "mr", "mrs", "ms", "st", "fig", "cf", "etc"}
)
WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_PREV_WORD = re.compile(r"([a-z][a-z.]*)$")


def split_sentences(text: str) -> list[tuple[int, int]]:
  """Character spans of the sentences of `text`, terminal punctuation included.

  A sentence ends at `.`, `!` or `?` followed by whitespace (or the end), or at a blank line;
  periods of a few abbreviations ("vs.", "e.g.") and decimals ("1.5") do not end one. Numbered-list
  markers ("1.") become their own short sentences, which is harmless. Whitespace-only spans are
  dropped and spans are trimmed.
  """
  low = text.lower()
  spans: list[tuple[int, int]] = []
  start = 0
  for m in _SENT_END.finditer(low):
    if m.group(0)[0] == "." and m.end() - m.start() == 1:
      prev = _PREV_WORD.search(low, max(0, m.start() - 12), m.start())
      if prev and prev.group(1).rstrip(".") in _ABBREVIATIONS:
        continue
    end = m.end() if m.group(0)[0] != "\n" else m.start()
    spans.append((start, end))
    start = m.end()
  spans.append((start, len(text)))
  out = []
  for s, e in spans:
    while s < e and text[s].isspace():
      s += 1
    while e > s and text[e - 1].isspace():
      e -= 1
    if e > s:
      out.append((s, e))
  return out


# Clause boundaries: no negation/uncertainty scope and no post-cue reaches across them.
HARD_BOUNDARY = re.compile(
  r";|:(?!\d)|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bwhich\b|\bwhereas\b|\bwhile\b"
  r"|\bexcept\b|\baside\s+from\b|\bapart\s+from\b|\botherwise\b|\bwith\s+the\s+exception\s+of\b"
  r"|\bthere\s+(?:is|are|was|were|has|have|appears?|remains?|seems?)\b|\bthere's\b|,\s*with\b"
)
# Where a new subject starts: ends the scope of a preceding pre-cue (but not the reach of
# post-cues, so "The heart and the mediastinum are normal" still negates both).
SOFT_BOUNDARY = re.compile(r"(?:,\s*(?:and\s+)?|\band\s+)(?:the|there|this|these|it|its|a|an)\b")
