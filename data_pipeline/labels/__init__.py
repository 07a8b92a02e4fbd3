"""Rule-based radiology-report labeler: the 14 CheXpert observations and where each finding is.

`ReportLabeler` turns free-text chest X-ray reports into CheXpert-style labels (1 positive,
0 negative, -1 uncertain, nan unmentioned) and the Chest ImaGenome regions each mention is tied to.
The rules are specified in docs/labeler.md. The package needs only numpy and the standard library
(it must not import jax or jimte).

Modules: `phrases` (the CheXpert phrase lists), `sentences` (sentences, tokens, clause
boundaries), `cues` (the negation / uncertainty cue table), `locations` (place words -> regions),
`results` (`Mention`, `LabelResult`, status values), `context` (per-report working state),
`labeler` (`ReportLabeler`).
"""

from data_pipeline.labels.labeler import ReportLabeler
from data_pipeline.labels.phrases import (
  EXTRA_UNMENTIONS,
  PHRASES_ENV_VAR,
  default_phrases_dir,
  load_phrase_lists,
)
from data_pipeline.labels.results import (
  NEGATIVE,
  POSITIVE,
  STATUS_VALUES,
  UNCERTAIN,
  LabelResult,
  Mention,
)
from data_pipeline.labels.sentences import split_sentences

__all__ = [
  "EXTRA_UNMENTIONS",
  "PHRASES_ENV_VAR",
  "POSITIVE",
  "NEGATIVE",
  "UNCERTAIN",
  "STATUS_VALUES",
  "Mention",
  "LabelResult",
  "ReportLabeler",
  "default_phrases_dir",
  "load_phrase_lists",
  "split_sentences",
]
