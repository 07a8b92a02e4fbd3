"""Objectives ablation on the built-in synthetic set: what each group of terms adds.

  python -m launch.sweep run     configs/sweeps/objectives.py     # 4 points x 3 seeds, one by one
  python -m launch.sweep collect configs/sweeps/objectives.py     # the table and plots

Points, each adding to the one before: the global (image-sentence) cross-entropy only; + the local
(region-word) cross-entropy; + the triplet terms at both levels; + masked language modelling.
Shorter runs than the default (3 of its 10 epochs: 279 image-text steps, ~4 minutes each on 2 CPU
cores, ~8 with the MLM updates on top) so that the 12 runs fit in an hour (docs/ablations.md).
"""

from jimte.losses.table import TERM_NAMES, term_names

BASE_CONFIG = "configs/default.py"
SEEDS = (0, 1, 2)
METRICS = (
  "eval/retrieval/global/i2t_R@10",
  "eval/retrieval/global/t2i_R@10",
  "eval/retrieval/global/same_findings/i2t_R@10",
  "eval/retrieval/local/i2t_R@10",
  "eval/retrieval/local/t2i_R@10",
  "eval/grounding/similarity/pointing_game",
)
# The budget of every run (see the docstring).
RUN = {"num_epochs": 3.0}


def _weights(on: tuple[str, ...]) -> dict[str, float]:
  """Term weights with only the terms in `on` at their default weight (the rest at 0)."""
  from jimte.losses.table import DEFAULT_WEIGHTS

  return {f"loss.weights.{n}": (DEFAULT_WEIGHTS[n] if n in on else 0.0) for n in TERM_NAMES}


def get_hyper(h):
  sentence_ce = term_names(level="sentence", kind="ce")
  ce = term_names(kind="ce")
  points = [
    h.label("global_ce", h.fixed({**_weights(sentence_ce), "loss.mixture": False})),
    h.label("+region_word", h.fixed({**_weights(ce), "loss.mixture": False})),
    h.label("+triplets", h.fixed({**_weights(TERM_NAMES), "loss.mixture": False})),
    h.label("+mlm", h.fixed({**_weights(TERM_NAMES), "loss.mixture": True})),
  ]
  return h.product([h.fixed(RUN), h.chainit(points)])
