"""Pieces shared by every config: loss, optimizer, checkpoint and evaluation defaults.

Configs are code (big_vision style): each file has `get_config(arg)` returning a ConfigDict; `arg`
is the text after a colon in `--config=configs/file.py:arg`, parsed by `parse_arg` into overrides.
"""

from __future__ import annotations

import ml_collections

# Loss term names, in the order losses.md lists them.
CE_TERMS = ("sentence_ce_i2t", "sentence_ce_t2i", "word_ce_i2t", "word_ce_t2i")
TRIPLET_TERMS = (
  "sentence_triplet_i2t",
  "sentence_triplet_t2i",
  "word_triplet_i2t",
  "word_triplet_t2i",
)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'k1=v1,k2=v2' (or a bare 'runlocal' flag) into a ConfigDict over `defaults`."""
  parsed = ml_collections.ConfigDict(defaults)
  if not arg:
    return parsed
  for item in arg.split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in parsed:
      raise KeyError(f"unknown config argument {key!r}; known: {sorted(parsed.keys())}")
    if not value:
      parsed[key] = True
      continue
    kind = type(defaults[key])
    parsed[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return parsed


def loss_config() -> ml_collections.ConfigDict:
  """The JoImTeRNet objective as losses.md states it; every term switchable by its weight."""
  return ml_collections.ConfigDict(
    dict(
      gamma1=4.0,
      gamma2=5.0,
      gamma3=10.0,
      sentence_margin=0.5,
      word_margin=0.5,
      weights={**dict.fromkeys(CE_TERMS, 1.0), **dict.fromkeys(TRIPLET_TERMS, 2.0)},
      negatives="random",  # random | hardest (VSE++)
      mask_same_study=True,  # pairs from one study are not negatives of each other
      text_block=0,  # texts per block of the region-word score; 0 = automatic
      local_pairs="global",  # global | device: region-word pairs over the global batch | per device
      # Paper's mixture: with probability itm_probability an image-text step, else an MLM step.
      mixture=True,
      itm_probability=0.3,
      mlm_weight=1.0,
      mlm_mask_rate=0.15,
    )
  )


def optim_config() -> ml_collections.ConfigDict:
  """AdamW per tower (lr 1e-4, wd 1e-4), clipping 1.5 per tower, step or warmup-cosine schedule."""
  return ml_collections.ConfigDict(
    dict(
      learning_rate=1e-4,
      weight_decay=1e-4,
      clip_norm=1.5,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      schedule="step",  # step | warmup_cosine | constant
      decay_epoch=-1.0,  # step schedule: x decay_factor from this epoch on (-1: never)
      decay_factor=0.1,
      warmup_epochs=0.0,  # warmup_cosine: linear warmup, then cosine to zero
    )
  )


def mesh_config() -> ml_collections.ConfigDict:
  """Device mesh: -1 takes the remaining devices. The batch is split over data x fsdp."""
  return ml_collections.ConfigDict(
    dict(
      axes=(("data", -1), ("fsdp", 1)),
      fsdp_min_size=2**18,  # tensors with at least this many elements are sharded over fsdp
      rules=(),  # (regex over 'a/b/c' parameter paths, partition spec tuple) pairs
    )
  )


def add_run_defaults(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run-level fields every config shares (durations in steps; evaluators; mesh), set in place.

  Configs then override what differs (num_epochs, log/checkpoint intervals, ...).
  """
  c.total_steps = 0  # > 0 overrides num_epochs
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  c.check_finite_every_steps = 1
  c.eval_every_steps = 0  # > 0: evaluate (and checkpoint) every so many steps too
  c.keep_best_checkpoints = 0  # > 0: also keep the best checkpoints by best_metric
  c.best_metric = "eval/retrieval/global/i2t_R@10"
  c.best_mode = "max"
  c.peak_flops_per_device = 0.0  # for the MFU estimate; 0 = look the device kind up (jimte/perf.py)
  c.mesh = mesh_config()
  # Evaluators, chosen by name.
  c.evals = ml_collections.ConfigDict(
    dict(
      retrieval=dict(split="test", ks=(1, 5, 10), scores=("global", "local", "combined")),
      attention_png=dict(split="test", num_pairs=4, words_per_pair=4),
    )
  )
  return c
