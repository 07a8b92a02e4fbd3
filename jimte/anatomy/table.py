"""Per-example anatomy of a split, looked up by example index: region texts, codes and boxes.

Built once per split on the host (the labeler is plain Python, not a graph op) and joined to each
host batch by its `index` column (`batch_rows`), so the tf.data pipelines stay as they are. Region
texts are stored once each (`texts`: the 29 normal sentences first, then every distinct abnormal
region text) and tokenised once (`tokens`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from data_pipeline.names import CHEST_IMAGENOME_REGIONS
from jimte.anatomy import regions

# Batch keys added by `batch_rows` (docs/contracts.md).
BATCH_KEYS = ("region_boxes", "region_tokens", "region_text_ids", "region_codes")


@dataclasses.dataclass(frozen=True)
class AnatomyTable:
  """Anatomy of the N examples of a split.

  Attributes:
    texts: distinct region texts; text j < 29 is region j's normal sentence.
    text_ids: int32 [N, 29], row i = the text of each region of example i.
    codes: int32 [N, 29] region codes (jimte.anatomy.regions).
    boxes: float32 [N, 29, 4] normalised [y0, x0, y1, x1]; the atlas where an image has none.
    tokens: int32 [len(texts), L] the texts tokenised (L = the region text length), or None.
  """

  texts: tuple[str, ...]
  text_ids: np.ndarray
  codes: np.ndarray
  boxes: np.ndarray
  tokens: np.ndarray | None = None

  @property
  def num_examples(self) -> int:
    return int(self.text_ids.shape[0])

  def sentences(self, index: int, region: int) -> list[str]:
    """The report sentences of example `index` about `region` ([] when the region is normal)."""
    text_id = int(self.text_ids[index, region])
    return [] if text_id < regions.NUM_REGIONS else [self.texts[text_id]]

  def with_tokens(self, tokenizer, length: int) -> AnatomyTable:
    """The table with its texts tokenised by `tokenizer` to `length` tokens (BOS ... EOS PAD)."""
    from data_pipeline.tokenizer import Tokenizer

    if length != tokenizer.max_len:
      tokenizer = Tokenizer(tokenizer.model_proto, max_len=length)
    tokens = np.asarray(tokenizer.encode(list(self.texts)), np.int32)
    return dataclasses.replace(self, tokens=tokens)

  def batch_rows(self, index: np.ndarray) -> dict[str, np.ndarray]:
    """The anatomy entries of a host batch whose rows are examples `index` (-1: padding rows,
    given example 0's values; their `valid` is False)."""
    if self.tokens is None:
      raise ValueError("the anatomy table has no tokens: call with_tokens first")
    index = np.asarray(index)
    if index.size and index.max() >= self.num_examples:
      raise IndexError(
        f"batch index {int(index.max())} beyond the anatomy table's {self.num_examples} examples"
      )
    rows = np.clip(index, 0, None)
    text_ids = self.text_ids[rows]
    return {
      "region_boxes": self.boxes[rows],
      "region_tokens": self.tokens[text_ids],
      "region_text_ids": text_ids,
      "region_codes": self.codes[rows],
    }


def build_table(
  reports: Sequence[str],
  *,
  codes: np.ndarray | None = None,
  boxes: np.ndarray | None = None,
  labeler=None,
) -> AnatomyTable:
  """The table of a split's reports: region texts from the labeler's region sentences; codes
  given (exact ground truth, [N, 29]) or the labeler's (weak); boxes given ([N, 29, 4], NaN rows
  filled from the atlas) or the atlas for every image."""
  from data_pipeline.labels.labeler import ReportLabeler

  labeler = labeler or ReportLabeler()
  n = len(reports)
  texts = [regions.normal_sentence(name) for name in CHEST_IMAGENOME_REGIONS]
  text_index = {t: j for j, t in enumerate(texts)}
  text_ids = np.zeros((n, regions.NUM_REGIONS), np.int32)
  weak = np.zeros((n, regions.NUM_REGIONS), np.int32)
  for i, report in enumerate(reports):
    result = labeler.label(report)
    weak[i] = regions.codes_from_labels(result)
    for r, sentences in enumerate(regions.region_sentences(result)):
      if not sentences:
        text_ids[i, r] = r
        continue
      text = regions.region_text(sentences, CHEST_IMAGENOME_REGIONS[r])
      text_ids[i, r] = text_index.setdefault(text, len(texts))
      if text_ids[i, r] == len(texts):
        texts.append(text)
  if codes is None:
    codes = weak
  codes = np.asarray(codes, np.int32)
  atlas = regions.default_atlas()
  if boxes is None:
    boxes = np.broadcast_to(atlas, (n, regions.NUM_REGIONS, 4)).copy()
  else:
    boxes = np.array(boxes, np.float32, copy=True)
    missing = ~np.isfinite(boxes).all(-1)
    boxes[missing] = np.broadcast_to(atlas, boxes.shape)[missing]
  for name, value, shape in (
    ("codes", codes, (n, regions.NUM_REGIONS)),
    ("boxes", boxes, (n, regions.NUM_REGIONS, 4)),
  ):
    if value.shape != shape:
      raise ValueError(f"anatomy {name} of shape {value.shape}, expected {shape} ({n} reports)")
  return AnatomyTable(texts=tuple(texts), text_ids=text_ids, codes=codes, boxes=boxes)


def synthetic_table(reports: Sequence[str], findings: Sequence[Sequence[Mapping]], boxes):
  """The table of phantoms: exact codes and per-image boxes, region texts from their reports."""
  codes = np.stack([regions.codes_from_findings(f) for f in findings]) if findings else None
  return build_table(reports, codes=codes, boxes=boxes)
