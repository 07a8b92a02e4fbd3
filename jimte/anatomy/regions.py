"""The 29 Chest ImaGenome regions as data: a default atlas, the containment of zones in lungs, and
per (image, region) finding codes and texts, from exact ground truth or from the report labeler.

A region code is an int32 bitmask: bit k set = CheXpert observation k (data_pipeline/names.py) is
present (positive or uncertain) in that region; 0 = normal. "No Finding" (bit 0) is never set.
A finding in a child region (a lung zone) is also a finding of its parent (that lung), so a query
on "left lung" finds a nodule of the left upper zone (`REGION_PARENTS`, docs/alc_itr.md).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from data_pipeline.names import CHEST_IMAGENOME_REGIONS, CHEXPERT_INDEX, REGION_INDEX

NUM_REGIONS = len(CHEST_IMAGENOME_REGIONS)
NO_FINDING_BIT = CHEXPERT_INDEX["No Finding"]

# Child region -> the region that contains it (one level; lungs and the heart and mediastinum).
REGION_PARENTS: dict[str, str] = {
  **{
    f"{side} {zone}": f"{side} lung"
    for side in ("right", "left")
    for zone in (
      "upper lung zone",
      "mid lung zone",
      "lower lung zone",
      "hilar structures",
      "apical zone",
      "costophrenic angle",
    )
  },
  "upper mediastinum": "mediastinum",
  "right atrium": "cardiac silhouette",
  "cavoatrial junction": "cardiac silhouette",
}
_PARENT_INDEX = np.array(
  [REGION_INDEX.get(REGION_PARENTS.get(name, ""), -1) for name in CHEST_IMAGENOME_REGIONS]
)


def normal_sentence(region: str) -> str:
  """The fixed region text of a region the report says nothing abnormal of."""
  return f"No abnormality in the {region}."


@functools.lru_cache(maxsize=1)
def default_atlas() -> np.ndarray:
  """float32 [29, 4]: normalised [y0, x0, y1, x1] boxes of the regions on a frontal chest X-ray.

  An approximation: the per-coordinate median of the region boxes of 200 chests drawn by the
  phantom generator (seed 0, no pose change), whose geometry follows adult PA proportions (patient's
  right on the image's left). For images without boxes of their own; real anatomy varies more.
  """
  from data_pipeline.phantoms import geometry

  rng = np.random.default_rng(0)
  boxes = [geometry.sample_geometry(rng).region_boxes(geometry.Pose()) for _ in range(200)]
  atlas = np.median(np.stack(boxes), axis=0).astype(np.float32)
  atlas.setflags(write=False)
  return atlas


def region_indices(names: Iterable[str]) -> list[int]:
  """Standard indices of region names; an unknown name is an error listing the valid ones."""
  out = []
  for name in names:
    key = " ".join(str(name).lower().split())
    if key not in REGION_INDEX:
      raise ValueError(
        f"unknown region {name!r}; the 29 Chest ImaGenome regions are: "
        + ", ".join(CHEST_IMAGENOME_REGIONS)
      )
    out.append(REGION_INDEX[key])
  return out


def propagate_to_parents(codes: np.ndarray) -> np.ndarray:
  """Codes [..., 29] with each child's bits also set on its parent region."""
  codes = np.array(codes, np.int32, copy=True)
  for child, parent in enumerate(_PARENT_INDEX):
    if parent >= 0:
      codes[..., parent] |= codes[..., child]
  return codes


def codes_from_findings(findings: Sequence[Mapping]) -> np.ndarray:
  """int32 [29] codes of one phantom's exact ground truth (dicts with 'chexpert', 'region')."""
  codes = np.zeros(NUM_REGIONS, np.int32)
  for f in findings:
    bit = CHEXPERT_INDEX[f["chexpert"]]
    if bit != NO_FINDING_BIT:
      codes[REGION_INDEX[f["region"]]] |= 1 << bit
  return propagate_to_parents(codes)


def _positive_mentions(result) -> Iterable:
  """The labeler's positive / uncertain mentions of a finding (not No Finding's phrases)."""
  for m in result.mentions:
    if m.status != "negative" and CHEXPERT_INDEX[m.observation] != NO_FINDING_BIT:
      yield m


def codes_from_labels(result) -> np.ndarray:
  """int32 [29] codes of one report from the labeler's `LabelResult` (weak labels)."""
  codes = np.zeros(NUM_REGIONS, np.int32)
  for m in _positive_mentions(result):
    for region in m.regions:
      codes[REGION_INDEX[region]] |= 1 << CHEXPERT_INDEX[m.observation]
  return propagate_to_parents(codes)


def region_sentences(result) -> list[list[str]]:
  """Per region (standard order) the report sentences the labeler ties to it, in reading order,
  each once; a child region's sentences are also its parent's."""
  spans: list[dict[int, str]] = [{} for _ in range(NUM_REGIONS)]
  for m in _positive_mentions(result):
    for region in m.regions:
      index = REGION_INDEX[region]
      for target in (index, _PARENT_INDEX[index]):
        if target >= 0:
          spans[target].setdefault(m.span[0], m.sentence)
  out = []
  for by_start in spans:
    seen: list[str] = []
    for _, sentence in sorted(by_start.items()):
      if sentence not in seen:
        seen.append(sentence)
    out.append(seen)
  return out


def region_text(sentences: Sequence[str], region: str) -> str:
  """The text of one (image, region): its sentences joined, or the region's normal sentence."""
  return " ".join(sentences) if sentences else normal_sentence(region)


def report_anatomy(report: str, labeler) -> tuple[list[str], list[list[str]], np.ndarray]:
  """One report -> (its 29 region texts, the sentences behind each, its weak codes [29])."""
  result = labeler.label(report)
  sentences = region_sentences(result)
  texts = [region_text(s, name) for s, name in zip(sentences, CHEST_IMAGENOME_REGIONS, strict=True)]
  return texts, sentences, codes_from_labels(result)


def finding_names(code: int) -> list[str]:
  """The CheXpert observations set in a region code, in CheXpert order."""
  from data_pipeline.names import CHEXPERT_OBSERVATIONS

  return [name for k, name in enumerate(CHEXPERT_OBSERVATIONS) if int(code) >> k & 1]
