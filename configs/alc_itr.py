"""ALC-ITR stage 2 on the built-in default: the JoImTeRNet objectives plus RRA-VL's
location-conditioned loss, from a stage-1 run (docs/alc_itr.md).

  python -m jimte.main --config configs/default.py --workdir workdirs/default          # stage 1
  python -m jimte.main --config configs/alc_itr.py --workdir workdirs/alc \\
      --config.init_from=workdirs/default                                                # stage 2

The argument is passed on to configs/default.py (`runlocal`, `tiny`, `noevals`); the stage-2 run
takes the stage-1 run's tokenizer and parameters (`init_from`), adds the anatomy head (initialised
to plain pooling) and evaluates location-conditioned retrieval beside plain retrieval.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config(arg)
  c.model.image.anatomy_head = True
  c.alc.weight = 1.0
  c.alc.positives = "same_text"
  c.num_epochs = 3.0 if c.num_epochs > 1.0 else c.num_epochs
  c.optim.warmup_epochs = 0.0  # the towers are trained already: no warm-up from scratch
  c.optim.learning_rate = 3e-4
  if not len(c.evals):  # `noevals`: none
    return c
  c.evals.grounding.untrained_baseline = False
  c.evals.anatomy = dict(
    type="anatomy_retrieval",
    split="test",
    every_steps=0,
    k=10,
    blend=0.5,
    query_regions="all",
    untrained_baseline=True,  # the stage-1 model, conditioned by plain pooling, beside stage 2
  )
  return c
