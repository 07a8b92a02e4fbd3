"""Pieces shared by every config: loss, optimizer, checkpoint and evaluation defaults.

Configs are code (big_vision style): each file has `get_config(arg)` returning a ConfigDict; `arg`
is the text after a colon in `--config=configs/file.py:arg`, parsed by `parse_arg` into overrides.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jimte.losses import DEFAULT_WEIGHTS


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


def phantom_knobs(**overrides) -> ml_collections.ConfigDict:
  """`config.data.phantom`: the phantom generator's scalar knobs (`PhantomConfig`, defaults from
  there), so that each is a typed, overridable config field (`--config.data.phantom.<knob>=...`)."""
  from data_pipeline.phantoms.config import PhantomConfig

  knobs = {
    f.name: f.default
    for f in dataclasses.fields(PhantomConfig)
    if f.name != "image_size" and isinstance(f.default, (int, float))
  }
  unknown = sorted(set(overrides) - set(knobs))
  if unknown:
    raise ValueError(f"config.data.phantom.{unknown[0]}: not a scalar knob of PhantomConfig")
  return ml_collections.ConfigDict({**knobs, **overrides})


def loss_config() -> ml_collections.ConfigDict:
  """The JoImTeRNet objective as losses.md states it; every term switchable by its weight."""
  return ml_collections.ConfigDict(
    dict(
      gamma1=4.0,
      gamma2=5.0,
      gamma3=10.0,
      sentence_margin=0.5,
      word_margin=0.5,
      weights=dict(DEFAULT_WEIGHTS),  # by term name, from the term table of jimte/losses
      negatives="random",  # random | hardest (VSE++)
      mask_same_study=True,  # pairs from one study are not negatives of each other
      text_block=0,  # texts per block of the region-word score; 0 = automatic
      local_pairs="global",  # global | device: region-word pairs over the global batch | per device
      # Word triplet (i2t): score the negative text with its own word count ("own", losses.md) or
      # with the anchor's ("anchor": the original release's code; the paper config's).
      word_triplet_length="own",
      # The original's mixture: each update is an image-text (ITM) step with probability
      # itm_probability, else an MLM step on a batch of its own reports stream (drawn per update
      # from (seed, update)). An epoch is a pass of ITM steps over the pairs (num_epochs,
      # total_steps and the schedule count ITM steps), so it also holds ~(1 - p) / p MLM steps
      # per ITM step.
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
      decay_all=False,  # weight decay on every parameter (the release's) or on matrices only
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


def alc_config() -> ml_collections.ConfigDict:
  """ALC-ITR's RRA-VL objective (docs/alc_itr.md); weight 0 = stage 1, JoImTeRNet alone."""
  return ml_collections.ConfigDict(
    dict(
      weight=0.0,  # > 0: the location-conditioned loss joins every ITM step (stage 2)
      slots=4,  # regions per step, the same for the whole global batch
      scale=10.0,  # logit scale of the region cosines (as gamma3 of the sentence level)
      positives="same_text",  # same_text | same_finding (also same nonzero code: SupCon)
      text_len=32,  # tokens of a region text
      boxes="auto",  # auto: a split's own per-image boxes where it has them, else the atlas | atlas
    )
  )


def add_run_defaults(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run-level fields every config shares (durations in steps; evaluators; mesh), set in place.

  Configs then override what differs (num_epochs, log/checkpoint intervals, ...).
  """
  c.total_steps = 0  # ITM steps of the run; > 0 overrides num_epochs
  c.log_every_steps = 20  # train metrics; NaN/inf checked at this cadence and before each save
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  c.keep_best_checkpoints = 0  # > 0: also keep the best checkpoints by best_metric (evaluated ones)
  c.best_metric = "eval/retrieval/global/i2t_R@10"
  c.best_mode = "max"
  c.peak_flops_per_device = 0.0  # for the MFU estimate; 0 = look the device kind up (jimte/perf.py)
  c.mesh = mesh_config()
  c.alc = alc_config()
  # A finished run's work dir whose latest checkpoint's params (and batch statistics) start this
  # run: parameters of the same path and shape are taken, new ones (e.g. the anatomy head) keep
  # their initialisation, optimizer states start fresh. Ignored once this run has a checkpoint.
  c.init_from = ""
  # Token-length buckets of training batches (jimte.batches.trim_text): each batch's text is cut to
  # the smallest bucket that holds its longest report (same maths, one compiled step per bucket);
  # the last must be tokenizer.max_len. Empty: every batch runs at max_len.
  c.text_buckets = ()
  # Evaluators: name -> dict(type, split, every_steps, <the type's settings>); `type` picks the
  # class (jimte/evaluate/registry.py). every_steps > 0: also every so many steps, saving a
  # checkpoint with the results (for keep_best_checkpoints); 0: only once training is complete.
  c.evals = ml_collections.ConfigDict(
    dict(
      retrieval=dict(
        type="retrieval",
        split="test",
        every_steps=0,
        ks=(1, 5, 10),
        scores=("global", "local", "combined"),
      ),
      attention_png=dict(
        type="attention_png",
        split="test",
        every_steps=0,
        num_pairs=4,
        words_per_pair=4,
        filename="attention.png",
      ),
    )
  )
  return c
