"""The objective's knobs on the built-in synthetic set, one at a time around the default: the
temperatures (gamma1..3), the triplet margins, and the negatives (random as the original, or the
hardest in the batch, VSE++).

  python -m launch.sweep run configs/sweeps/losses.py
  python -m launch.sweep collect configs/sweeps/losses.py
"""

BASE_CONFIG = "configs/default.py"
SEEDS = (0, 1)
METRICS = ("eval/retrieval/global/i2t_R@10", "eval/retrieval/local/i2t_R@10")
RUN = {"data.num_train": 2000, "num_epochs": 4.0}


def get_hyper(h):
  one_at_a_time = h.chainit(
    [
      h.sweep("loss.gamma1", [2.0, 8.0]),
      h.sweep("loss.gamma2", [2.5, 10.0]),
      h.sweep("loss.gamma3", [5.0, 20.0]),
      h.zipit(
        [h.sweep("loss.sentence_margin", [0.2, 1.0]), h.sweep("loss.word_margin", [0.2, 1.0])]
      ),
      h.sweep("loss.negatives", ["hardest"]),
    ]
  )
  return h.product([h.fixed(RUN), h.chainit([h.label("default", h.fixed({})), one_at_a_time])])
