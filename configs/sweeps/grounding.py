"""Grounding on the built-in synthetic set: what moves the pointing game of the finding phrases.

  python -m launch.sweep run     configs/sweeps/grounding.py     # 7 points x 1 seed, ~95 min
  python -m launch.sweep collect configs/sweeps/grounding.py

Each point is one change to the default (docs/ablations.md, "Where it fails"): the reports'
negated statements off; the local features on a sphere (word-softmax logits 10 x cosine); the
global score made of the local features (global vector = mean of the regions, sentence vector =
mean of the words: a CAM-style map); one finding per study; 30,000 phantoms each seen once
instead of ten passes over 3,000; and the last with 16 x 16 regions and the CAM-style pooling.
Full-length runs (the default's ~930 image-text steps; ~10 minutes each on 2 CPU cores, ~22 for
the 16 x 16 point).
"""

BASE_CONFIG = "configs/default.py"
SEEDS = (0,)
METRICS = (
  "eval/grounding/similarity/pointing_game",
  "eval/grounding/attention/pointing_game",
  "eval/grounding/similarity/cnr",
  "eval/retrieval/global/i2t_R@10",
  "eval/retrieval/global/same_findings/i2t_R@10",
)
# A tower pooling "word_mean" has no other pooling to score.
CAM_STYLE = {
  "model.image.global_pooling": "region_mean",
  "model.text.sentence_pooling": "word_mean",
  "evals.retrieval.scores": ("global", "global_word_mean", "local", "combined"),
}
FRESH = {"data.num_train": 30000, "num_epochs": 1.0, "optim.warmup_epochs": 0.1}


def get_hyper(h):
  return h.chainit(
    [
      h.label("default", h.fixed({})),
      h.label("no_negations", h.fixed({"data.phantom.negation_probability": 0.0})),
      h.label("local_norm_10", h.fixed({"model.local_norm": 10.0})),
      h.label("cam_style", h.fixed(CAM_STYLE)),
      h.label("one_finding", h.fixed({"data.phantom.max_findings": 1})),
      h.label("fresh_30k", h.fixed(FRESH)),
      h.label(
        "fresh_30k_16x16_cam", h.fixed({**FRESH, **CAM_STYLE, "model.image.region_stage": -3})
      ),
    ]
  )
