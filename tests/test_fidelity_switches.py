"""The model switches that restore the original release's behaviour (docs/fidelity.md): layer
initialisation and the frozen PAD row, on in the paper config and off in the default config. (The
native crop and nearest rotation are tested in test_input_preprocess.py, the release's word rule
in test_tokenizer.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from jimte.models import build_model, paper_model_config, small_model_config
from jimte.models.text import PAD_ID, BertTextEncoder
from jimte.optim import apply_tower_update, make_tower_optimizer


def tiny_towers(config):
  """A paper- or small-layout model config shrunk to CPU-test sizes (switches untouched)."""
  config.embed_dim = 64
  config.image.widths = (8, 16, 32, 64)
  config.image.stem_width = 8
  config.image.attention_stages = (-2,)
  config.text.update(vocab_size=300, max_len=16, num_layers=1, num_heads=2, width=64, mlp_dim=128)
  config.text.position_table_size = None
  return config


def init_params(config):
  model = build_model(config)
  images = jnp.zeros((1, 32, 32, 1), jnp.float32)
  tokens = jnp.zeros((1, 16), jnp.int32)
  init = jax.jit(lambda key: model.init({"params": key}, images, tokens, train=False)["params"])
  return init(jax.random.key(0))


def assert_uniform(values, bound):
  """Values look like U(-bound, bound): inside it, reaching its ends, with its std."""
  values = np.asarray(values).ravel()
  assert np.abs(values).max() <= bound
  assert np.abs(values).max() > 0.9 * bound
  np.testing.assert_allclose(values.std(), bound / np.sqrt(3), rtol=0.1)


# ------------------------------------------------------------------------- 1. layer initialisation


def test_paper_heads_start_from_the_originals_initialisation():
  config = tiny_towers(paper_model_config())
  config.image.region_head_bias = True  # the release has none; a bias takes PyTorch's default
  params = init_params(config)
  image, text = params["image"], params["text"]
  # ImageEncoder: kaiming_normal_(mode="fan_out") on the region conv (fan-out = 64 outputs);
  # nn.Linear(4 * 64, 64) with PyTorch's default uniform +-1/sqrt(fan_in) on weight and bias.
  region = np.asarray(image["region_head"]["kernel"])
  np.testing.assert_allclose(region.std(), np.sqrt(2 / 64), rtol=0.1)
  assert np.abs(region).max() > 2.5 * np.sqrt(2 / 64)  # a normal, not truncated at 2 sigma
  assert_uniform(image["region_head"]["bias"], 1 / np.sqrt(32))  # over the 32 region channels
  assert_uniform(image["global_head"]["kernel"], 1 / np.sqrt(256))
  assert_uniform(image["global_head"]["bias"], 1 / np.sqrt(256))
  # TextEncoder: word_fc, sent_fc and the MLMHead's transform and decoder are nn.Linear(64, .)
  # outside BertModel, so PyTorch's default init; BertModel's own layers: normal(0, 0.02).
  for head in ("word_head", "sentence_head", "mlm_transform", "mlm_decoder"):
    assert_uniform(text[head]["kernel"], 1 / 8)
    assert_uniform(text[head]["bias"], 1 / 8)
  encoder = np.asarray(text["layer0"]["mlp_in"]["kernel"])
  np.testing.assert_allclose(encoder.std(), 0.02, rtol=0.05)
  assert np.abs(encoder).max() > 2.5 * 0.02
  assert not np.any(np.asarray(text["layer0"]["mlp_in"]["bias"]))


def test_default_config_keeps_flax_and_bert_initialisation():
  params = init_params(tiny_towers(small_model_config()))
  image, text = params["image"], params["text"]
  # Flax's LeCun normal (truncated at 2 sigma, rescaled to unit variance over fan-in), zero bias.
  for kernel, fan_in in (
    (image["region_head"]["kernel"], 32),
    (image["global_head"]["kernel"], 256),
  ):
    kernel = np.asarray(kernel)
    np.testing.assert_allclose(kernel.std(), 1 / np.sqrt(fan_in), rtol=0.1)
    assert np.abs(kernel).max() <= 2.0 / 0.8796 / np.sqrt(fan_in)  # 0.8796: truncation rescale
  assert not np.any(np.asarray(image["global_head"]["bias"]))
  # BERT's truncated normal 0.02 on every text kernel, zero bias.
  for head in ("word_head", "sentence_head", "mlm_transform"):
    kernel = np.asarray(text[head]["kernel"])
    assert np.abs(kernel).max() <= 0.04
    assert not np.any(np.asarray(text[head]["bias"]))
  assert np.abs(np.asarray(text["token_embedding"]["embedding"][PAD_ID])).max() > 0


def test_unknown_initialisation_is_an_error_naming_it():
  config = tiny_towers(small_model_config())
  config.text.weight_init = "xavier"
  with pytest.raises(ValueError, match="weight_init.*xavier"):
    init_params(config)


# --------------------------------------------------------------------------- 2. frozen PAD row


def text_tower(frozen_pad_row: bool, mlm_head: str) -> BertTextEncoder:
  return BertTextEncoder(
    embed_dim=32,
    vocab_size=40,
    max_len=12,
    num_layers=1,
    num_heads=2,
    width=32,
    mlp_dim=64,
    dropout=0.0,
    attention_dropout=0.0,
    mlm_head=mlm_head,
    weight_init="original",
    frozen_pad_row=frozen_pad_row,
  )


def train_text_steps(model: BertTextEncoder, num_steps: int = 3):
  """AdamW steps (weight decay on, as the run's optimizer) on a padded batch whose loss reads
  every position, padding included, through the word, sentence and MLM heads."""
  tokens = jnp.array([[2, 9, 10, 11, 3, 0, 0, 0], [2, 12, 13, 3, 0, 0, 0, 0]], jnp.int32)
  params = model.init(jax.random.key(1), tokens, train=False)["params"]
  optim = common.optim_config()
  optim.update(learning_rate=1e-2, weight_decay=0.1)
  tx = make_tower_optimizer(optim)
  opt_state = tx.init(params)

  def loss(p):
    out = model.apply({"params": p}, tokens, train=False)
    logits = model.apply({"params": p}, tokens, train=False, method="mlm_logits")
    return jnp.sum(out.words**2) + jnp.sum(out.sentence**2) + jnp.mean(logits**2)

  @jax.jit
  def step(p, state):
    grads = jax.grad(loss)(p)
    return (*apply_tower_update(tx, state, p, grads, 1e-2), grads)

  start = params
  for _ in range(num_steps):
    params, opt_state, grads = step(params, opt_state)
  return start, params, grads


@pytest.mark.parametrize("mlm_head", ["untied", "tied"])
def test_frozen_pad_row_stays_zero_through_adamw_steps(mlm_head):
  start, end, grads = train_text_steps(text_tower(True, mlm_head))
  table0, table1 = start["token_embedding"]["embedding"], end["token_embedding"]["embedding"]
  assert not np.any(np.asarray(table0[PAD_ID]))
  assert not np.any(np.asarray(table1[PAD_ID]))
  assert not np.any(np.asarray(grads["token_embedding"]["embedding"][PAD_ID]))
  for used in (2, 9, 13, 3):  # the other rows of the batch do learn
    assert np.abs(np.asarray(table1[used] - table0[used])).max() > 1e-4


def test_trained_pad_row_is_an_ordinary_row():
  # The default: the PAD row starts random and moves, so the test above can tell the two apart.
  start, end, _ = train_text_steps(text_tower(False, "untied"))
  table0, table1 = start["token_embedding"]["embedding"], end["token_embedding"]["embedding"]
  assert np.abs(np.asarray(table0[PAD_ID])).max() > 0
  assert np.abs(np.asarray(table1[PAD_ID] - table0[PAD_ID])).max() > 1e-4


def test_paper_config_freezes_the_pad_row_and_default_does_not():
  assert build_model(paper_model_config()).text.frozen_pad_row
  assert not build_model(small_model_config()).text.frozen_pad_row
