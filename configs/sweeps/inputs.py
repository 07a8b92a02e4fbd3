"""Input and architecture switches on the built-in synthetic set: input size, sentence pooling,
where region-word pairs are formed (over the global batch or per device), text dropout, and the
image-text / MLM mixture.

  python -m launch.sweep run configs/sweeps/inputs.py
  python -m launch.sweep collect configs/sweeps/inputs.py
"""

BASE_CONFIG = "configs/default.py"
SEEDS = (0, 1)
METRICS = ("eval/retrieval/global/i2t_R@10", "eval/retrieval/local/i2t_R@10")
RUN = {"data.num_train": 2000, "num_epochs": 4.0}


def get_hyper(h):
  variants = h.chainit(
    [
      h.label("default", h.fixed({})),
      h.zipit([h.sweep("image_size", [96, 160]), h.sweep("data.phantom_size", [96, 160])]),
      h.sweep("model.text.sentence_pooling", ["mean"]),
      h.sweep("loss.local_pairs", ["device"]),
      h.zipit(
        [h.sweep("model.text.dropout", [0.1]), h.sweep("model.text.attention_dropout", [0.1])]
      ),
      h.label("mixture_0.3", h.fixed({"loss.mixture": True, "loss.itm_probability": 0.3})),
    ]
  )
  return h.product([h.fixed(RUN), variants])
