"""The built-in default: the synthetic chest X-ray set, small towers, minutes on 2 CPU cores.

  python -m jimte.main --config configs/default.py --workdir workdirs/default
  python -m jimte.main --config configs/default.py:runlocal --workdir /tmp/smoke   # a minute-long
  smoke run configs/default.py:tiny   # tiny towers and data: what the tests run
  configs/default.py:tiny,noevals     # and no evaluators (tests that compare parameters only)
Any field can be overridden with --config.<key>=<value>; an unknown key is an error naming it.
"""

from __future__ import annotations

import ml_collections

from configs import common
from jimte.models.joimternet import small_model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, runlocal=False, tiny=False, noevals=False)
  c = ml_collections.ConfigDict()
  c.seed = 0

  # ----- Data: the deterministic phantom generator, served through tf.data.
  c.data = ml_collections.ConfigDict(
    dict(
      source="synthetic",  # synthetic | tfds
      # source=tfds: <tfds_data_dir>/<tfds_name>/<tfds_config>/<latest version>, TFDS's layout
      # (empty config: the builder's default; empty data dir: $TFDS_DATA_DIR or
      # ~/tensorflow_datasets); a tfds_data_dir holding dataset_info.json is used as it is.
      tfds_name="",
      tfds_config="",
      tfds_data_dir="",
      train_split="train",  # the evaluators' splits: config.evals
      num_train=3000,
      num_eval=300,  # synthetic only
      phantom_size=128,  # size the phantoms are drawn at
      # The generator's knobs (data_pipeline.phantoms.PhantomConfig). 90% of studies with a
      # finding (generator default 65%): a normal study's image differs from another's only in
      # pose and noise, so its exact report cannot be found; docs/ablations.md.
      phantom=common.phantom_knobs(abnormal_probability=0.9),
      seed=0,
      augment=True,
    )
  )
  c.image_size = 128
  c.tokenizer = ml_collections.ConfigDict(
    dict(
      vocab_size=2000,
      max_len=160,
      model_type="unigram",
      word_normalizer="plain",  # word models: plain | original (the release's rule)
      path="",  # an existing tokenizer dir; empty = train one on the train split's reports
    )
  )

  # ----- Model.
  c.model = small_model_config()
  c.model.text.max_len = c.tokenizer.get_ref("max_len")
  # From-scratch image-text matching starts on a plateau where both towers' vectors barely vary with
  # content; text dropout noise is then ~50x the content signal and keeps the run there for far
  # longer than a CPU budget allows (measured: no escape in 400 steps with it, escape at ~240
  # without).
  c.model.text.dropout = 0.0
  c.model.text.attention_dropout = 0.0
  # The sentence vector is the head on the mean of the word states, not on the first token: at
  # initialisation the first token's output is the same for every report (mean pairwise cosine
  # 1.0000, std < 1e-4, over 32 held-out reports; the word mean's 0.74 +- 0.08), so the sentence
  # terms start with no signal (measured: plateau left at ~150 steps instead of ~300;
  # docs/ablations.md). The paper config keeps the original's first token.
  c.model.text.sentence_pooling = "mean"

  # ----- Objective and optimizer.
  c.loss = common.loss_config()
  # Every step an image-text step: the paper's 0.3/0.7 ITM/MLM mixture (configs/joimternet_paper.py)
  # would leave ~220 image-text steps in the CPU budget, too few to leave the plateau above.
  c.loss.mixture = False
  c.optim = common.optim_config()
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 1.0

  # ----- Schedule of the run (durations in epochs of the train split, resolved in one place),
  # ----- parallelism (config.mesh) and evaluators (config.evals).
  common.add_run_defaults(c)
  c.batch_size = 32  # global batch
  c.num_epochs = 10.0
  # Retrieval (jimte/evaluate/registry.py): the whole pool and 3 blocks of 100 of the 300 pairs.
  c.evals.retrieval.update(
    scores=("global", "global_other_pooling", "global_word_mean", "local", "combined"),
    pool_size=100,
    num_pools=3,
    pool_sampling="blocks",
    pool_seed=0,
    identical_texts_match=True,
    one_image_per_study=False,
    same_findings="auto",  # also: a hit is a case with the same findings (where labels exist)
  )
  # Grounding of the reports' finding phrases in their exact boxes (the synthetic set's ground
  # truth), printed beside the untrained model's figures (jimte/evaluate/grounding.py).
  c.evals.grounding = dict(
    type="grounding",
    split="test",
    every_steps=0,
    maps=("attention", "similarity"),
    untrained_baseline=True,
    skip_without_boxes=True,  # a tfds dataset without boxes: no grounding, a log line
  )

  if args.runlocal or args.tiny:
    c.data.num_train, c.data.num_eval = 128, 64
    c.num_epochs = 1.0
    c.batch_size = 16
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    c.evals.retrieval.pool_size = 32
  if args.tiny:  # seconds per step: what the tests run (trainer, resume, multi-process)
    c.data.num_train, c.data.num_eval = 64, 32
    c.image_size = c.data.phantom_size = 64
    c.batch_size = 8
    c.model.embed_dim = 32
    c.model.image.widths = (8, 16, 32, 32)
    c.model.image.stem_width = 8
    c.model.text.update(num_layers=1, width=32, mlp_dim=64, num_heads=2)
    c.tokenizer.vocab_size, c.tokenizer.max_len = 400, 48
    c.log_every_steps = 2
    c.evals.attention_png.num_pairs = 2
    c.evals.grounding.untrained_baseline = False  # one pass fewer per run (tests that want it: on)
  if args.noevals:
    c.evals = ml_collections.ConfigDict()
  return c
