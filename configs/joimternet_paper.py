"""The paper's sizes (JoImTeRNet, MLMI 2021): 2048 px X-rays, ResNet widths 16..512, 16x16 regions
of dimension 512, a 3-layer BERT of width 512 with 160 tokens, batch 128, AdamW 1e-4, the 0.3/0.7
image-text/MLM mixture, 35 epochs of image-text steps with lr x0.1 from epoch 20 (misc/config.py).

  python -m jimte.main --config configs/joimternet_paper.py:tfds_name=iu_xray --workdir gs://...
  (reads <tfds_data_dir>/iu_xray/<tfds_config or the default config>/<latest version>; set them as
  :tfds_name=iu_xray,tfds_config=r2gen,tfds_data_dir=gs://BUCKET/tfds)
  configs/joimternet_paper.py:image_size=512   # the same towers at a reduced input (benchmarks);
  (the crop is taken at the records' stored resolution, as the release's: read records stored at
  about that size, e.g. tfds_config=frontal_512, or set data.augment=original to scale them first)
"""

from __future__ import annotations

import ml_collections

from configs import common
from jimte.models.joimternet import paper_model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(
    arg,
    image_size=2048,
    tfds_name="iu_xray",
    tfds_config="",
    tfds_data_dir="",
    batch_size=128,
    synthetic=False,
  )
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(
    dict(
      source="synthetic" if args.synthetic else "tfds",
      tfds_name=args.tfds_name,
      tfds_config=args.tfds_config,
      tfds_data_dir=args.tfds_data_dir,
      train_split="train",
      num_train=4096,
      num_eval=512,
      phantom_size=args.image_size,
      seed=0,
      # The release's rotation (nearest pixels), crop at native resolution and jitter (policies:
      # original_native | original | mild | none); for MIMIC-CXR read tfds_config=frontal_native.
      augment="original_native",
    )
  )
  c.image_size = args.image_size
  c.tokenizer = ml_collections.ConfigDict(
    # The release's word vocabulary: 8,410 words and specials plus [MASK] = 8,411 ids; a "word" in
    # the alignment is a word, by the release's rule: punctuation dropped, numbers -> "number"
    # (word_normalizer="plain" keeps numbers; model_type="unigram" | "bpe": sub-word pieces).
    dict(vocab_size=8411, max_len=160, model_type="word", word_normalizer="original", path="")
  )

  # The release's towers, parameter for parameter: 8-channel stem, its 16-head soft attention
  # (model.image.attention="original"), the untied V - 1 MLM head (model.text.mlm_head="untied").
  c.model = paper_model_config()
  c.model.text.max_len = c.tokenizer.get_ref("max_len")

  c.loss = common.loss_config()
  c.loss.word_triplet_length = "anchor"  # the release scores the negative text with the anchor's
  c.optim = common.optim_config()
  c.optim.schedule = "step"  # the release's StepLR(lr_drop=20, gamma=0.1), stepped per epoch
  c.optim.decay_epoch = 20.0
  c.optim.decay_all = True  # torch.optim.AdamW over all parameters, biases and norms included

  common.add_run_defaults(c)
  c.batch_size = args.batch_size
  c.num_epochs = 35.0  # epochs of image-text steps; the MLM updates come on top (common.py)
  # Each batch's text cut to the smallest of these that holds its longest report (the original pads
  # every batch to 160): the same maths on fewer positions (jimte.batches.trim_text). Steps of 16:
  # on IU X-ray reports at B=8 the mean cut is 82 positions (89 with 64/96/128/160; README).
  c.text_buckets = (48, 64, 80, 96, 112, 128, 160)
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  # The original's retrieval protocol: one image per study, the whole test pool and 3 consecutive
  # blocks of 1000 candidates; the sentence vector and the mean of the word vectors.
  c.evals.retrieval.update(
    scores=("global", "global_other_pooling", "global_word_mean", "local", "combined"),
    pool_size=1000,
    num_pools=3,
    pool_sampling="blocks",
    pool_seed=0,
    identical_texts_match=True,
    one_image_per_study=True,
  )
  return c
