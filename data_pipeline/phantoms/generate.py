"""Examples: a plan rendered and written, with its ground truth, one at a time or as a split.

`generate_example` is a pure function of `(seed, split, index)`; `generate_split` stacks a range of
examples; `findings_to_arrays` pads the ground truth of one example to fixed-size arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from data_pipeline.names import CHEST_IMAGENOME_REGIONS, CHEXPERT_OBSERVATIONS, region_id
from data_pipeline.phantoms.config import (
  DEFAULT_CONFIG,
  FINDING_INDEX,
  FINDING_TO_CHEXPERT,
  MAX_FINDINGS,
  SEVERITY_NAMES,
  PhantomConfig,
)
from data_pipeline.phantoms.plans import ExamplePlan, plan_example
from data_pipeline.phantoms.render import Rendering, render_plan
from data_pipeline.phantoms.reports import Report, write_report


def _finding_records(plan: ExamplePlan, rendering: Rendering, report: Report) -> list[dict]:
  """Ground-truth records (one per finding spec) joining placement, box and report mention."""
  records = []
  for spec, box in zip(plan.findings, rendering.finding_boxes, strict=True):
    mention = report.mentions[spec.group]
    records.append(
      {
        "name": spec.kind,
        "finding_id": FINDING_INDEX[spec.kind],
        "region": spec.region,
        "region_id": region_id(spec.region),
        "box": [float(b) for b in box],
        "severity": int(spec.severity),
        "severity_name": SEVERITY_NAMES[spec.severity],
        "severity_word": mention.severity_word,
        "side": spec.side,
        "variant": spec.variant,
        "group": spec.group,
        "words": mention.words,
        "span": mention.span,
        "term": mention.term,
        "term_span": mention.term_span,
        "chexpert": FINDING_TO_CHEXPERT[spec.kind],
      }
    )
  return records


def example_from_plan(plan: ExamplePlan, config: PhantomConfig = DEFAULT_CONFIG) -> dict:
  """Render and write one planned study into an example dict (see `generate_example`)."""
  rendering = render_plan(plan, config.image_size)
  report = write_report(plan, config)
  return {
    "image": rendering.image,
    "text": report.text,
    "findings_text": report.findings_text,
    "impression_text": report.impression_text,
    "study_id": plan.study_id,
    "patient_id": plan.patient_id,
    "labels": report.labels,
    "findings": _finding_records(plan, rendering, report),
    "region_boxes": rendering.region_boxes,
    "index": plan.index,
    "split": plan.split,
  }


def generate_example(
  index: int, *, split: str = "train", seed: int = 0, config: PhantomConfig = DEFAULT_CONFIG
) -> dict:
  """Example `index` of a split, independent of every other example.

  Returns a dict with the contract keys `image` (uint8 [S, S, 1]), `text` (findings then
  impression), `study_id`, `patient_id`, `labels` (float32 [14], CheXpert order), plus
  `findings` (list of ground-truth dicts: name, finding_id, region, region_id, box [y0, x0, y1,
  x1], severity, severity_name, severity_word, side, variant, group, words, span, term, term_span,
  chexpert), `region_boxes` (float32 [29, 4]), `findings_text`, `impression_text`, `index`
  and `split`.
  """
  return example_from_plan(plan_example(index, split=split, seed=seed, config=config), config)


def findings_to_arrays(
  findings: Sequence[Mapping], max_findings: int = MAX_FINDINGS
) -> dict[str, np.ndarray]:
  """Fixed-size, padded ground truth of one example, for tf.data and evaluators.

  Returns `finding_id` int32 [M] (-1 padding), `finding_region` int32 [M] (-1),
  `finding_box` float32 [M, 4], `finding_severity` int32 [M], `finding_span` and
  `finding_term_span` int32 [M, 2] (character offsets into `text`; 0 padding) and
  `finding_valid` bool [M].
  """
  if len(findings) > max_findings:
    raise ValueError(f"{len(findings)} findings do not fit in {max_findings} padded rows")
  out = {
    "finding_id": np.full(max_findings, -1, np.int32),
    "finding_region": np.full(max_findings, -1, np.int32),
    "finding_box": np.zeros((max_findings, 4), np.float32),
    "finding_severity": np.zeros(max_findings, np.int32),
    "finding_span": np.zeros((max_findings, 2), np.int32),
    "finding_term_span": np.zeros((max_findings, 2), np.int32),
    "finding_valid": np.zeros(max_findings, bool),
  }
  for i, finding in enumerate(findings):
    out["finding_id"][i] = FINDING_INDEX[finding["name"]]
    out["finding_region"][i] = region_id(finding["region"])
    out["finding_box"][i] = finding["box"]
    out["finding_severity"][i] = finding["severity"]
    out["finding_span"][i] = finding["span"]
    out["finding_term_span"][i] = finding["term_span"]
    out["finding_valid"][i] = True
  return out


def generate_split(
  n: int,
  *,
  split: str = "train",
  seed: int = 0,
  config: PhantomConfig = DEFAULT_CONFIG,
  start: int = 0,
) -> dict:
  """Examples `start .. start + n - 1` of a split, stacked.

  Returns numpy arrays `image` uint8 [n, S, S, 1], `labels` float32 [n, 14], `region_boxes`
  float32 [n, 29, 4], `index` int32 [n], the padded `finding_*` arrays [n, MAX_FINDINGS, ...],
  and lists `text`, `study_id`, `patient_id`, `findings` (the ground-truth dicts).
  """
  examples = [generate_example(start + i, split=split, seed=seed, config=config) for i in range(n)]
  size = config.image_size
  out = {
    "image": np.stack([e["image"] for e in examples])
    if examples
    else np.zeros((0, size, size, 1), np.uint8),
    "labels": np.stack([e["labels"] for e in examples])
    if examples
    else np.zeros((0, len(CHEXPERT_OBSERVATIONS)), np.float32),
    "region_boxes": (
      np.stack([e["region_boxes"] for e in examples])
      if examples
      else np.zeros((0, len(CHEST_IMAGENOME_REGIONS), 4), np.float32)
    ),
    "index": np.arange(start, start + n, dtype=np.int32),
    "text": [e["text"] for e in examples],
    "study_id": [e["study_id"] for e in examples],
    "patient_id": [e["patient_id"] for e in examples],
    "findings": [e["findings"] for e in examples],
  }
  padded = [findings_to_arrays(e["findings"]) for e in examples]
  for key, empty in findings_to_arrays([]).items():
    out[key] = (
      np.stack([p[key] for p in padded]) if padded else np.zeros((0,) + empty.shape, empty.dtype)
    )
  return out
