"""The JoImTeRNet objectives (the contract: docs/losses.md), as pure JAX functions.

- `table`: the one table of the eight ITM terms (names, groupings, default weights).
- `region_word`: the blocked region-word score kernel Z (custom VJP) and the attention behind it.
- `numerics`, `matching`, `negatives`: cosines, per-anchor cross-entropy and triplet pieces, and the
  negatives of the triplets (uniform draws, hardest mining).
- `objective`: L_ITM over the global batch (`itm_objective`), the only ITM objective.
- `mlm`: the masked language modelling loss.
- `anatomy`: ALC-ITR's location-conditioned contrastive loss (RRA-VL) over the global batch.
"""

from jimte.losses.anatomy import POSITIVES, conditioned_objective, select_regions
from jimte.losses.matching import ce_from_scores, cross_entropy, triplet
from jimte.losses.mlm import mlm_loss
from jimte.losses.negatives import (
  hardest_negatives,
  mine_hardest,
  sample_negatives,
  split_negatives,
)
from jimte.losses.numerics import COSINE_EPS, cosine_matrix
from jimte.losses.objective import LOCAL_PAIRS, WORD_TRIPLET_LENGTHS, itm_objective
from jimte.losses.region_word import (
  EMPTY_TEXT_SCORE,
  auto_text_block,
  pair_region_word_scores,
  region_word_scores,
  word_region_attention,
)
from jimte.losses.table import (
  DEFAULT_WEIGHTS,
  SENTENCE_TERMS,
  TERM_NAMES,
  TERMS,
  WORD_TERMS,
  Term,
  resolve_weights,
  term_names,
)

__all__ = [
  "COSINE_EPS",
  "DEFAULT_WEIGHTS",
  "EMPTY_TEXT_SCORE",
  "LOCAL_PAIRS",
  "POSITIVES",
  "SENTENCE_TERMS",
  "TERMS",
  "TERM_NAMES",
  "WORD_TERMS",
  "WORD_TRIPLET_LENGTHS",
  "Term",
  "auto_text_block",
  "ce_from_scores",
  "conditioned_objective",
  "cosine_matrix",
  "cross_entropy",
  "hardest_negatives",
  "itm_objective",
  "mine_hardest",
  "mlm_loss",
  "pair_region_word_scores",
  "region_word_scores",
  "resolve_weights",
  "sample_negatives",
  "select_regions",
  "split_negatives",
  "term_names",
  "triplet",
  "word_region_attention",
]
