"""Phrase grounding against ground-truth boxes: does the model look where a finding's words say?

For every finding a report names (the phrase: its term, e.g. 'nodular opacity', at the character
offset the ground truth gives) the model gives two maps over the region grid, brought to the
evaluation view's pixels (bilinear from the cell centres, `maps.grid_to_pixels`):

- "attention": the word->region attention alpha[k, r] of losses.md (the second softmax, gamma1),
  averaged over the phrase's word pieces: where the alignment looks for those words;
- "similarity": the cosine of each region vector with the phrase vector (the mean of the phrase's
  L2-normalised word vectors), as the similarity maps of the phrase-grounding literature.

Metrics, each per phrase against the union A of its boxes (a finding group, e.g. 'bilateral
effusions', has one box per side), then averaged over phrases (MS-CXR / BioViL, Boecking et al.
2022, written out here):

- pointing game: 1 if the map's maximum lies in A, else 0. Chance (a uniformly random point) is the
  mean area fraction of A, reported as `chance_pointing_game`; `oracle/pointing_game` is the
  ceiling of the model's grid: the map of each cell's share of box pixels (a bilinear map peaks
  at a cell centre, so a box that holds none, e.g. a small nodule on a coarse grid, is missed).
- CNR (contrast-to-noise ratio): |mean_A m - mean_Abar m| / sqrt(var_A m + var_Abar m) over the
  pixels inside A and outside it (Abar); invariant to scaling the map, so both kinds compare.
- mIoU: the map min-max normalised to [0, 1] (our choice: attention sums to one, cosines do not, so
  fixed thresholds on raw values would not mean the same for the two), thresholded at each of
  `thresholds`; IoU of each binary mask with A, averaged over thresholds.

A phrase whose words the tokenised report does not hold (cut by `max_len`) is skipped and counted.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from jimte import losses
from jimte.evaluate import maps

MAP_KINDS = ("attention", "similarity")
DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Phrase:
  """One finding phrase of one encoded pair: its alignment-word slots and its boxes."""

  row: int  # row of the encoded split
  finding: str  # finding kind, e.g. 'nodule'
  term: str  # the report's words for it, e.g. 'nodular opacity'
  slots: tuple[int, ...]  # alignment-word positions (token position - 1) of its pieces
  boxes: tuple[Box, ...]


def _clean(word: str) -> str:
  return re.sub(r"[^0-9a-z]+", "", word.lower())


def report_words(pieces: Sequence[str], valid: np.ndarray) -> list[tuple[str, list[int]]]:
  """(word, its slots) over the valid alignment slots: pieces joined into whole words (a piece
  that starts with U+2581 starts a word), lower-cased, punctuation removed. A special piece
  (</s>, <pad>, ...) is a word of its own with an empty text, so it never matches."""
  words: list[tuple[str, list[int]]] = []
  previous_special = True
  for slot in np.flatnonzero(valid):
    piece = pieces[slot]
    special = piece.startswith("<") and piece.endswith(">")
    if special or previous_special or piece.startswith("\u2581"):
      words.append(("", []))
    text, slots = words[-1]
    words[-1] = (text if special else text + _clean(piece), [*slots, int(slot)])
    previous_special = special
  return words


def phrase_slots(
  words: Sequence[tuple[str, list[int]]], text: str, term: str, term_start: int
) -> tuple[int, ...] | None:
  """The slots of the `term` occurrence that starts at character `term_start` of `text`: the n-th
  occurrence of its words in `words`, n = how many times it occurs in the text before that offset.
  None when the tokenised report does not hold it (truncated)."""
  wanted = [w for w in (_clean(p) for p in term.split()) if w]
  if not wanted:
    return None
  pattern = r"(?<![0-9a-z])" + r"[^0-9a-z]+".join(map(re.escape, wanted)) + r"(?![0-9a-z])"
  before = len(re.findall(pattern, text[:term_start].lower()))
  texts = [w for w, _ in words]
  found = 0
  for start in range(len(texts) - len(wanted) + 1):
    if texts[start : start + len(wanted)] == wanted:
      if found == before:
        return tuple(s for _, slots in words[start : start + len(wanted)] for s in slots)
      found += 1
  return None


def finding_phrases(
  encoded: Mapping[str, np.ndarray],
  tokenizer,
  texts: Sequence[str],
  findings: Sequence[Sequence[Mapping]],
) -> tuple[list[Phrase], collections.Counter]:
  """The phrases of every encoded pair: `texts[i]` and `findings[i]` are example i's report and
  ground truth (records with 'name', 'term', 'term_span', 'group', 'box'). Returns the phrases and
  the counts of those skipped, by reason."""
  phrases, skipped = [], collections.Counter()
  for row, index in enumerate(np.asarray(encoded["index"])):
    records = findings[int(index)]
    if not records:
      continue
    tokens = encoded["tokens"][row]
    pieces = [tokenizer.id_to_piece(int(t)) for t in tokens[1:]]
    words = report_words(pieces, np.asarray(encoded["word_mask"][row], bool))
    groups: dict[int, list[Mapping]] = collections.defaultdict(list)
    for record in records:
      groups[int(record["group"])].append(record)
    for group in groups.values():
      first = group[0]
      slots = phrase_slots(words, texts[int(index)], first["term"], int(first["term_span"][0]))
      if slots is None:
        skipped["phrase not in the tokenised report"] += 1
        continue
      boxes = tuple(tuple(float(b) for b in r["box"]) for r in group)
      phrases.append(Phrase(row, str(first["name"]), str(first["term"]), slots, boxes))
  return phrases, skipped


def phrase_maps(
  encoded: Mapping[str, np.ndarray], phrases: Sequence[Phrase], gamma1: float
) -> dict[str, np.ndarray]:
  """{kind: [P, h, w]} grid maps of each phrase, for each of `MAP_KINDS`."""
  out = {kind: [] for kind in MAP_KINDS}
  by_row = collections.defaultdict(list)
  for p, phrase in enumerate(phrases):
    by_row[phrase.row].append(p)
  grids: dict[int, dict[str, np.ndarray]] = {}
  rows = sorted(by_row)
  for start in range(0, len(rows), 64):
    chunk = rows[start : start + 64]
    regions = np.asarray(encoded["regions"][chunk], np.float32)
    n, h, w, d = regions.shape
    flat = regions.reshape(n, h * w, d)
    words = np.asarray(encoded["words"][chunk], np.float32)
    mask = np.asarray(encoded["word_mask"][chunk], bool)
    alpha = np.asarray(
      losses.word_region_attention(jnp.asarray(flat), jnp.asarray(words), jnp.asarray(mask), gamma1)
    )  # [n, T, R]
    unit_regions = flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)
    unit_words = words / np.maximum(np.linalg.norm(words, axis=-1, keepdims=True), 1e-12)
    for i, row in enumerate(chunk):
      for p in by_row[row]:
        slots = list(phrases[p].slots)
        vector = unit_words[i, slots].mean(0)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        grids[p] = {
          "attention": alpha[i, slots].mean(0).reshape(h, w),
          "similarity": (unit_regions[i] @ vector).reshape(h, w),
        }
  for p in range(len(phrases)):
    for kind in MAP_KINDS:
      out[kind].append(grids[p][kind])
  return {kind: np.stack(v) if v else np.zeros((0, 1, 1)) for kind, v in out.items()}


def box_coverage(inside: np.ndarray, h: int, w: int) -> np.ndarray:
  """[h, w]: the fraction of each grid cell's pixels inside the mask (cells split the image as
  evenly as integer pixel bounds allow)."""
  rows = np.linspace(0, inside.shape[0], h + 1).round().astype(int)
  cols = np.linspace(0, inside.shape[1], w + 1).round().astype(int)
  sums = np.add.reduceat(np.add.reduceat(inside.astype(np.float64), rows[:-1], 0), cols[:-1], 1)
  return sums / (np.diff(rows)[:, None] * np.diff(cols)[None, :])


def oracle_pointing_game(masks: Sequence[np.ndarray], h: int, w: int) -> float:
  """The best pointing game any map on an h x w grid reaches over these box masks: each cell's
  share of box pixels, brought to pixels as the model's maps are (a box holding no cell centre is
  missed by any map)."""
  coverage = np.stack([box_coverage(m, h, w) for m in masks])
  oracle = maps.grid_to_pixels(coverage, *masks[0].shape)
  return float(np.mean([pointing_hit(o, m) for o, m in zip(oracle, masks, strict=True)]))


def pointing_hit(heat: np.ndarray, inside: np.ndarray) -> float:
  """1.0 if the (first) maximum of `heat` lies inside the mask, else 0.0."""
  return float(inside.ravel()[int(np.argmax(heat))])


def contrast_to_noise(heat: np.ndarray, inside: np.ndarray) -> float:
  """|mean inside - mean outside| / sqrt(var inside + var outside) (0 where both are constant)."""
  a, b = heat[inside], heat[~inside]
  if not a.size or not b.size:
    return 0.0
  spread = np.sqrt(a.var() + b.var())
  return float(abs(a.mean() - b.mean()) / spread) if spread > 0 else 0.0


def mean_iou(heat: np.ndarray, inside: np.ndarray, thresholds: Sequence[float]) -> float:
  """IoU of (min-max normalised heat >= t) with the mask, averaged over `thresholds`."""
  low, high = float(heat.min()), float(heat.max())
  scaled = (heat - low) / (high - low) if high > low else np.ones_like(heat)
  ious = []
  for t in thresholds:
    chosen = scaled >= t
    union = np.logical_or(chosen, inside).sum()
    ious.append(np.logical_and(chosen, inside).sum() / union if union else 0.0)
  return float(np.mean(ious))


def evaluate(
  encoded: Mapping[str, np.ndarray],
  tokenizer,
  texts: Sequence[str],
  findings: Sequence[Sequence[Mapping]],
  *,
  image_size: int,
  gamma1: float,
  kinds: Sequence[str] = MAP_KINDS,
  thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, float]:
  """Pointing game, CNR and mIoU per map kind (averaged over phrases, and the pointing game per
  finding kind), with chance and counts. Boxes are normalised to the evaluation view (square)."""
  phrases, skipped = finding_phrases(encoded, tokenizer, texts, findings)
  results: dict[str, float] = {"num_phrases": float(len(phrases))}
  for reason, count in skipped.items():
    results[f"skipped/{reason}"] = float(count)
  if not phrases:
    return results
  grids = phrase_maps(encoded, phrases, gamma1)
  masks = [maps.box_mask(p.boxes, image_size, image_size) for p in phrases]
  results["chance_pointing_game"] = float(np.mean([m.mean() for m in masks]))
  # The best any map on the model's grid can do: each cell's share of box pixels, upsampled.
  h, w = grids[MAP_KINDS[0]].shape[-2:]
  results["oracle/pointing_game"] = oracle_pointing_game(masks, h, w)
  names = sorted({p.finding for p in phrases})
  for name in names:
    results[f"num_phrases/{name}"] = float(sum(p.finding == name for p in phrases))
  for kind in kinds:
    heats = maps.grid_to_pixels(grids[kind], image_size, image_size)  # [P, S, S]
    hits = np.array([pointing_hit(h, m) for h, m in zip(heats, masks, strict=True)])
    results[f"{kind}/pointing_game"] = float(hits.mean())
    results[f"{kind}/cnr"] = float(
      np.mean([contrast_to_noise(h, m) for h, m in zip(heats, masks, strict=True)])
    )
    results[f"{kind}/miou"] = float(
      np.mean([mean_iou(h, m, thresholds) for h, m in zip(heats, masks, strict=True)])
    )
    for name in names:
      chosen = np.array([p.finding == name for p in phrases])
      results[f"{kind}/pointing_game/{name}"] = float(hits[chosen].mean())
  return results
