"""A tiny, seconds-per-step version of the default config, shared by the trainer tests."""
from configs import default as default_config


def tiny_config(**overrides):
  c = default_config.get_config("runlocal")
  c.data.num_train, c.data.num_eval = 64, 32
  c.image_size = c.data.phantom_size = 64
  c.batch_size = 8
  c.num_epochs = 1.0
  c.model.embed_dim = 32
  c.model.image.widths = (8, 16, 32, 32)
  c.model.image.stem_width = 8
  c.model.text.num_layers, c.model.text.width, c.model.text.mlp_dim, c.model.text.num_heads = 1, 32, 64, 2
  c.tokenizer.vocab_size, c.tokenizer.max_len = 400, 48
  c.log_every_steps = 2
  c.checkpoint_every_steps = 4
  c.evals.attention_png.num_pairs = 2
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c
