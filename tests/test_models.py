"""Tests of jimte.models: shapes, parameter tree, BatchNorm state, padding, bf16, remat, MLM."""

import ast
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jimte.losses.mlm import mlm_loss, token_ids_to_classes
from jimte.models import (
  MASK_ID,
  PAD_ID,
  JointOutput,
  SpatialSoftmaxAttention,
  adaptive_avg_pool,
  build_model,
  count_params,
  init_variables,
  paper_model_config,
  small_model_config,
)

# XLA's backend optimisations cost most of the compile time of these tiny graphs (2.5x measured) and
# buy nothing at these sizes.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

TINY_IMAGE_SIZE = 32
TINY_TEXT_LENGTH = 12


def tiny_config(**overrides):
  """A model small enough to compile and run in a few seconds on two CPU cores."""
  config = small_model_config()
  config.embed_dim = 16
  config.image.widths = (4, 8, 8)
  config.image.stem_width = 4
  config.image.blocks_per_stage = 1
  config.image.first_stage_stride = 1
  config.image.attention_stages = (-3, -2)
  config.image.region_stage = -2
  config.text.vocab_size = 40
  config.text.max_len = 24
  config.text.num_layers = 2
  config.text.num_heads = 2
  config.text.width = 16
  config.text.mlp_dim = 32
  for key, value in overrides.items():
    section, _, field = key.rpartition("__")
    (config[section] if section else config)[field] = value
  return config


def make_tokens(lengths, total_length, seed=0):
  """Token batch `[BOS] w.. [EOS] [PAD]..` with the given numbers of tokens (BOS/EOS included)."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((len(lengths), total_length), np.int32)
  for row, length in enumerate(lengths):
    tokens[row, 0] = 2
    tokens[row, 1 : length - 1] = rng.integers(5, 40, size=length - 2)
    tokens[row, length - 1] = 3
  return jnp.asarray(tokens)


def make_images(batch, size=TINY_IMAGE_SIZE, seed=0):
  return jax.random.uniform(
    jax.random.PRNGKey(seed), (batch, size, size, 1), minval=-1.0, maxval=1.0
  )


@functools.cache
def tiny_model_and_variables():
  """The tiny model and its initial variables, built once for the whole file."""
  model = build_model(tiny_config())
  variables = fast_jit(
    functools.partial(
      init_variables, model, image_size=TINY_IMAGE_SIZE, text_length=TINY_TEXT_LENGTH
    )
  )(jax.random.PRNGKey(0))
  return model, variables


@functools.cache
def jitted_apply(model):
  """One jitted `model.apply` per model, so tests share compilations of equal signatures."""
  return fast_jit(model.apply, static_argnames=("train", "mutable", "method"))


def init_text_only(model, tokens, seed=0):
  """Variables of the text tower alone (no image tower to compile)."""
  return fast_jit(functools.partial(model.init, train=False, method="encode_text"))(
    jax.random.PRNGKey(seed), tokens
  )


def abstract_variables(model, image_size, text_length):
  """The model's variables as shapes and dtypes only: tracing, no compilation or compute."""
  return jax.eval_shape(
    functools.partial(init_variables, model, image_size=image_size, text_length=text_length),
    jax.random.PRNGKey(0),
  )


def relative_error(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


# ------------------------------------------------------------------------------- shapes (traced)


def test_small_config_output_shapes_and_param_tree():
  config = small_model_config()
  model = build_model(config)
  variables = abstract_variables(model, 128, 64)
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["params"]) == {"image", "text"}
  assert set(variables["batch_stats"]) == {"image"}
  images = jax.ShapeDtypeStruct((3, 128, 128, 1), jnp.float32)
  tokens = jax.ShapeDtypeStruct((3, 64), jnp.int32)
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, images, tokens)
  assert isinstance(out, JointOutput)
  assert out.image_global.shape == (3, 128) and out.image_global.dtype == jnp.float32
  assert out.regions.shape == (3, 8, 8, 128) and out.regions.dtype == jnp.float32
  assert out.sentence.shape == (3, 128)
  assert out.words.shape == (3, 63, 128)
  assert out.word_mask.shape == (3, 63) and out.word_mask.dtype == jnp.bool_
  # Attention after stages 1 (16x16 grid) and 2 (8x8 grid) of the 4-stage small layout.
  assert {k: v.shape for k, v in out.attention_maps.items()} == {
    "stage1": (3, 16, 16),
    "stage2": (3, 8, 8),
  }
  logits = jax.eval_shape(
    functools.partial(model.apply, train=False, method="mlm_logits"), variables, tokens
  )
  assert logits.shape == (3, 64, config.text.vocab_size) and logits.dtype == jnp.float32


@pytest.mark.parametrize("image_size", [256, 512, 2048])
def test_paper_layout_region_grid_is_input_over_128(image_size):
  config = paper_model_config()
  model = build_model(config)
  variables = abstract_variables(model, image_size, 160)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 1), jnp.float32)
  out = jax.eval_shape(
    functools.partial(model.apply, train=False, method="encode_image"), variables, images
  )
  grid = image_size // 128
  assert out.regions.shape == (1, grid, grid, 512)
  assert out.global_emb.shape == (1, 512)
  # Attention after the 128-channel (stage 3) and 256-channel (stage 4, the region) stages.
  assert out.attention_maps["stage3"].shape == (1, 2 * grid, 2 * grid)
  assert out.attention_maps["stage4"].shape == (1, grid, grid)


# The original release's towers at its vocabulary, counted for real (2026-12-02): the release's
# `JoImTeR/model_img.py` and `model_txt.py` (git show from the mirror into /tmp, never into this
# repository) instantiated under torch 2.13.0+cpu and transformers 5.24.0 in a separate venv,
# `ImageEncoder(output_channels=512)` and `TextEncoder(BertConfig(vocab_size=8411, hidden_size=512,
# num_hidden_layers=3, num_attention_heads=8, intermediate_size=2048, max_position_embeddings=512,
# type_vocab_size=2, ...), 512, pool="cls")` as `trainer_pretrain.py` builds them, then
# `sum(p.numel() for p in m.parameters())`; `python benchmarks/param_counts.py --torch-python
# /tmp/torchenv/bin/python` repeats it. 8,411 ids = the 8,410 entries of its `word2idx` + [MASK].
ORIGINAL_VOCAB_SIZE = 8411
ORIGINAL_IMAGE_TOWER_PARAMS = 12_378_906
ORIGINAL_TEXT_TOWER_PARAMS = 19_131_098  # BERT (no pooler) + MLM head + sent_fc + word_fc


def paper_params_at_original_vocab():
  config = paper_model_config()
  config.text.vocab_size = ORIGINAL_VOCAB_SIZE
  return abstract_variables(build_model(config), 256, 160)["params"]


def test_paper_towers_have_the_original_parameter_counts():
  params = paper_params_at_original_vocab()
  assert count_params(params["image"]) == ORIGINAL_IMAGE_TOWER_PARAMS
  assert count_params(params["text"]) == ORIGINAL_TEXT_TOWER_PARAMS


def test_paper_towers_are_laid_out_as_the_original():
  params = paper_params_at_original_vocab()
  image, text = params["image"], params["text"]
  assert image["stem_conv"]["kernel"].shape == (7, 7, 1, 8)  # 8-channel stem
  # Soft attention after the 128- and 256-channel stages: 16 heads, each a 1x1 projection of
  # every channel (the original's Conv3d of kernel (C, 1, 1)) with a bias, and one scale.
  for stage, channels in (("stage3", 128), ("stage4", 256)):
    block = image[f"{stage}_attention"]
    assert block["heads"]["kernel"].shape == (channels, 16)
    assert block["heads"]["bias"].shape == (16,)
    assert block["scale"].shape == (1,)
  assert set(image["region_head"]) == {"kernel"}  # conv1x1(256, 512, bias=False)
  assert image["region_head"]["kernel"].shape == (1, 1, 256, 512)
  assert image["global_head"]["kernel"].shape == (4 * 512, 512)
  # Untied MLM decoder with V - 1 outputs, no bias over the V ids; BERT's embedding tables.
  assert text["mlm_decoder"]["kernel"].shape == (512, ORIGINAL_VOCAB_SIZE - 1)
  assert text["mlm_decoder"]["bias"].shape == (ORIGINAL_VOCAB_SIZE - 1,)
  assert "mlm_bias" not in text
  assert text["token_embedding"]["embedding"].shape == (ORIGINAL_VOCAB_SIZE, 512)
  assert text["position_embedding"].shape == (512, 512)
  assert text["token_type_embedding"].shape == (2, 512)


def test_small_config_keeps_the_tied_head_and_sigmoid_gate():
  config = small_model_config()
  params = abstract_variables(build_model(config), 128, 64)["params"]
  text = params["text"]
  # Tied MLM output: the only [V, W] matrix is the token embedding; the head adds a bias only.
  assert text["mlm_bias"].shape == (1000,) and "mlm_decoder" not in text
  assert text["position_embedding"].shape == (64, 128) and "token_type_embedding" not in text
  assert set(params["image"]["stage1_attention"]) == {"conv", "bn", "logits"}
  assert set(params["image"]["region_head"]) == {"kernel", "bias"}
  width, mlp, layers, vocab, max_len, embed = 128, 512, 2, 1000, 64, 128
  per_layer = 4 * (width * width + width) + 2 * width * mlp + mlp + width + 4 * width
  expected_text = (
    vocab * width
    + max_len * width
    + 2 * width
    + layers * per_layer
    + 2 * (width * embed + embed)  # word + sentence heads
    + width * width
    + width
    + 2 * width
    + vocab
  )  # MLM head
  assert count_params(text) == expected_text


# ------------------------------------------------------------------------------ computed behaviour


def test_adaptive_avg_pool_matches_pytorch_bins():
  x = jnp.arange(2 * 5 * 4 * 3, dtype=jnp.float32).reshape(2, 5, 4, 3)
  pooled = adaptive_avg_pool(x, 2)
  # Length 5 -> bins [0, 3) and [2, 5) (overlapping); length 4 -> [0, 2) and [2, 4).
  expected = np.stack(
    [
      np.stack(
        [np.asarray(x)[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in ((0, 2), (2, 4))], axis=1
      )
      for r0, r1 in ((0, 3), (2, 5))
    ],
    axis=1,
  )
  np.testing.assert_allclose(pooled, expected, rtol=1e-6)
  single = adaptive_avg_pool(x[:, :1, :1], 2)
  np.testing.assert_allclose(single, np.broadcast_to(np.asarray(x)[:, :1, :1], (2, 2, 2, 3)))


def test_batch_stats_update_in_train_mode_only():
  model, variables = tiny_model_and_variables()
  images = make_images(4)
  tokens = make_tokens([5, 7, 12, 9], TINY_TEXT_LENGTH)
  apply = jitted_apply(model)
  _, updated = apply(
    variables,
    images,
    tokens,
    train=True,
    mutable=("batch_stats",),
    rngs={"dropout": jax.random.PRNGKey(1)},
  )
  before = jax.tree_util.tree_leaves(variables["batch_stats"])
  after = jax.tree_util.tree_leaves(updated["batch_stats"])
  assert len(before) == len(after) > 0
  assert all(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
  _, unchanged = apply(variables, images, tokens, train=False, mutable=("batch_stats",))
  for b, a in zip(before, jax.tree_util.tree_leaves(unchanged["batch_stats"]), strict=True):
    np.testing.assert_array_equal(b, a)
  # Eval mode uses the running statistics: new statistics give a different output.
  out_old = apply(variables, images, tokens, train=False)
  out_new = apply({**variables, **updated}, images, tokens, train=False)
  assert not np.allclose(out_old.image_global, out_new.image_global)
  np.testing.assert_array_equal(out_old.sentence, out_new.sentence)


def test_sigmoid_gate_maps_lie_in_unit_interval_and_outputs_are_finite():
  model, variables = tiny_model_and_variables()
  images, tokens = make_images(4), make_tokens([4, 12, 7, 9], TINY_TEXT_LENGTH)
  out = jitted_apply(model)(variables, images, tokens, train=False)
  assert set(out.attention_maps) == {"stage0", "stage1"}
  for attention_map in out.attention_maps.values():
    assert np.all((attention_map >= 0) & (attention_map <= 1))
    assert np.std(np.asarray(attention_map)) > 0
  assert out.regions.shape == (4, 4, 4, 16)
  for leaf in jax.tree_util.tree_leaves(out):
    assert np.all(np.isfinite(leaf))


def test_word_mask_matches_tokens():
  model, variables = tiny_model_and_variables()
  tokens = make_tokens([3, 12, 6, 9], TINY_TEXT_LENGTH)
  out = jitted_apply(model)(variables, tokens, train=False, method="encode_text")
  expected = np.asarray(tokens)[:, 1:] != PAD_ID
  np.testing.assert_array_equal(out.word_mask, expected)
  assert out.word_mask.sum(axis=1).tolist() == [2, 11, 5, 8]  # words after BOS, EOS included
  assert out.words.shape == (4, TINY_TEXT_LENGTH - 1, 16)
  assert out.hidden.shape == (4, TINY_TEXT_LENGTH, 16)


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_appending_padding_leaves_valid_outputs_unchanged(pooling):
  model = build_model(tiny_config(text__sentence_pooling=pooling))
  short = make_tokens([4, 9, 7], 10, seed=3)
  long = jnp.pad(short, ((0, 0), (0, 8)), constant_values=PAD_ID)
  variables = init_text_only(model, long)
  encode = jitted_apply(model)
  out_short = encode(variables, short, train=False, method="encode_text")
  out_long = encode(variables, long, train=False, method="encode_text")
  np.testing.assert_allclose(out_long.sentence, out_short.sentence, rtol=1e-5, atol=1e-5)
  mask = np.asarray(out_short.word_mask)
  np.testing.assert_allclose(
    np.asarray(out_long.words)[:, :9][mask], np.asarray(out_short.words)[mask], rtol=1e-5, atol=1e-5
  )
  assert not np.asarray(out_long.word_mask)[:, 9:].any()


def test_mean_pooling_averages_the_alignment_words():
  model = build_model(tiny_config(text__sentence_pooling="mean"))
  tokens = make_tokens([4, 12], TINY_TEXT_LENGTH, seed=5)
  variables = init_text_only(model, tokens, seed=2)
  out = jitted_apply(model)(variables, tokens, train=False, method="encode_text")
  hidden = np.asarray(out.hidden, np.float64)
  mask = np.asarray(out.word_mask, np.float64)[..., None]
  pooled = (hidden[:, 1:] * mask).sum(axis=1) / mask.sum(axis=1)
  head = variables["params"]["text"]["sentence_head"]
  expected = pooled @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  np.testing.assert_allclose(out.sentence, expected, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_is_close_to_float32():
  model, variables = tiny_model_and_variables()
  bf16_model = build_model(tiny_config(dtype="bfloat16"))
  images, tokens = make_images(4), make_tokens([4, 12, 7, 9], TINY_TEXT_LENGTH)
  out32 = jitted_apply(model)(variables, images, tokens, train=False)
  out16 = jitted_apply(bf16_model)(variables, images, tokens, train=False)
  bf16_params = jax.tree_util.tree_leaves(
    abstract_variables(bf16_model, TINY_IMAGE_SIZE, TINY_TEXT_LENGTH)["params"]
  )
  assert all(leaf.dtype == jnp.float32 for leaf in bf16_params)
  for name in ("image_global", "regions", "sentence", "words"):
    value16 = getattr(out16, name)
    assert value16.dtype == jnp.float32
    assert relative_error(value16, getattr(out32, name)) < 0.05, name
    assert not np.array_equal(value16, getattr(out32, name)), name  # bf16 really was used
  logits16 = jitted_apply(bf16_model)(variables, tokens, train=False, method="mlm_logits")
  assert logits16.dtype == jnp.float32


def joint_loss(model, params, batch_stats, images, tokens, dropout_rng):
  """A scalar touching every output (and the MLM head), for gradient tests."""
  out, _ = model.apply(
    {"params": params, "batch_stats": batch_stats},
    images,
    tokens,
    train=True,
    mutable=("batch_stats",),
    rngs={"dropout": dropout_rng},
  )
  logits = model.apply(
    {"params": params}, tokens, train=True, method="mlm_logits", rngs={"dropout": dropout_rng}
  )
  mask = out.word_mask[..., None]
  return (
    jnp.mean(out.image_global**2)
    + jnp.mean(out.regions**2)
    + jnp.mean(jnp.sin(out.sentence))
    + jnp.sum(out.words * mask) / jnp.sum(mask)
    + sum(jnp.mean(m) for m in out.attention_maps.values())
    + jnp.mean(jax.nn.log_softmax(logits)[..., 7])
  )


def test_remat_gives_identical_outputs_and_gradients_which_are_finite():
  model, variables = tiny_model_and_variables()
  remat_model = build_model(tiny_config(remat=True))
  images, tokens = make_images(2), make_tokens([5, 12], TINY_TEXT_LENGTH)
  grads = {}
  for name, m in (("plain", model), ("remat", remat_model)):
    grad_fn = fast_jit(jax.value_and_grad(functools.partial(joint_loss, m)))
    grads[name] = grad_fn(
      variables["params"], variables["batch_stats"], images, tokens, jax.random.PRNGKey(3)
    )
  (loss, grad), (remat_loss, remat_grad) = grads["plain"], grads["remat"]
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  flat, flat_remat = (jax.tree_util.tree_leaves_with_path(g) for g in (grad, remat_grad))
  assert [p for p, _ in flat] == [p for p, _ in flat_remat]
  for (path, g), (_, g_remat) in zip(flat, flat_remat, strict=True):
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    np.testing.assert_allclose(g_remat, g, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  norms = {k: tree_norm(grad[k]) for k in ("image", "text")}
  assert norms["image"] > 0 and norms["text"] > 0


def tree_norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree))))


def test_mlm_output_projection_is_tied_to_token_embedding():
  model, variables = tiny_model_and_variables()
  tokens = make_tokens([6, 9, 4, 12], TINY_TEXT_LENGTH, seed=1)
  params = variables["params"]

  def mlm_loss(text_params, target_id):
    logits = model.apply(
      {"params": {**params, "text": text_params}}, tokens, train=False, method="mlm_logits"
    )
    return -jnp.mean(jax.nn.log_softmax(logits)[..., target_id])

  logits = jitted_apply(model)(variables, tokens, train=False, method="mlm_logits")
  assert logits.shape == (4, TINY_TEXT_LENGTH, 40) and logits.dtype == jnp.float32
  absent_id = next(i for i in range(5, 40) if i not in set(np.asarray(tokens).ravel()))
  grad = fast_jit(jax.grad(mlm_loss), static_argnums=1)(params["text"], absent_id)
  embedding_grad = np.asarray(grad["token_embedding"]["embedding"])
  # A token that never occurs in the input can only receive gradient through the output
  # projection, i.e. because the projection is the embedding matrix.
  assert np.linalg.norm(embedding_grad[absent_id]) > 0
  assert np.all(np.isfinite(embedding_grad))
  # The logits are hidden @ embedding.T + bias: perturbing one embedding row moves that logit.
  text = dict(params["text"])
  bumped = np.asarray(text["token_embedding"]["embedding"]).copy()
  bumped[absent_id] *= 2.0
  text["token_embedding"] = {"embedding": jnp.asarray(bumped)}
  logits_bumped = jitted_apply(model)(
    {"params": {**params, "text": text}}, tokens, train=False, method="mlm_logits"
  )
  changed = ~np.isclose(np.asarray(logits_bumped), np.asarray(logits))
  assert changed[..., absent_id].all()
  assert not changed[..., [i for i in range(40) if i != absent_id]].any()


def test_dropout_is_active_only_in_train_mode():
  model, variables = tiny_model_and_variables()
  tokens = make_tokens([8, 12, 5, 3], TINY_TEXT_LENGTH)
  apply = jitted_apply(model)
  eval_a = apply(variables, tokens, train=False, method="encode_text")
  eval_b = apply(variables, tokens, train=False, method="encode_text")
  np.testing.assert_array_equal(eval_a.sentence, eval_b.sentence)
  train_a = apply(
    variables, tokens, train=True, method="encode_text", rngs={"dropout": jax.random.PRNGKey(0)}
  )
  train_b = apply(
    variables, tokens, train=True, method="encode_text", rngs={"dropout": jax.random.PRNGKey(1)}
  )
  assert not np.allclose(train_a.sentence, train_b.sentence)


# ------------------------------------------------------------- the original's soft attention


def original_attention_reference(x, kernel, bias, scale):
  """The release's `SoftAttention.forward` in numpy, channels first as it is written there: a
  Conv3d of kernel and stride (C, 1, 1) from 1 group to the heads, LeakyReLU, softmax over the
  H * W positions per head, the heads summed into one map, `x + x * map * scale`."""
  x_chw = np.transpose(np.asarray(x, np.float64), (0, 3, 1, 2))  # [B, C, H, W]
  batch, _, height, width = x_chw.shape
  weight = np.asarray(kernel, np.float64).T[:, None, :, None, None]  # [heads, 1, C, 1, 1]
  conv = np.einsum("bchw,mc->bmhw", x_chw, weight[:, 0, :, 0, 0])
  conv += np.asarray(bias, np.float64)[None, :, None, None]
  conv = np.where(conv >= 0, conv, 0.01 * conv).reshape(batch, -1, height * width)
  softmax = np.exp(conv - conv.max(axis=-1, keepdims=True))
  softmax /= softmax.sum(axis=-1, keepdims=True)
  attention_map = softmax.reshape(batch, -1, height, width).sum(axis=1, keepdims=True)
  out = x_chw + x_chw * attention_map * float(np.asarray(scale)[0])
  return np.transpose(out, (0, 2, 3, 1)), attention_map[:, 0]


def init_attention_block(seed=0, scale_init=None, shape=(2, 5, 6, 12)):
  block = SpatialSoftmaxAttention(num_heads=4, scale_init=scale_init)
  x = jax.random.normal(jax.random.PRNGKey(seed + 100), shape)
  variables = fast_jit(functools.partial(block.init, train=False))(jax.random.PRNGKey(seed), x)
  return block, variables, x


def test_original_attention_matches_the_release_formula():
  block, variables, x = init_attention_block()
  out, attention_map = jitted_apply(block)(variables, x, train=False)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert attention_map.shape == (2, 5, 6) and attention_map.dtype == jnp.float32
  params = variables["params"]
  expected_out, expected_map = original_attention_reference(
    x, params["heads"]["kernel"], params["heads"]["bias"], params["scale"]
  )
  np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attention_map, expected_map, rtol=1e-5, atol=1e-7)
  # Each head's softmax over the 30 positions sums to 1, so the summed map sums to the 4 heads.
  np.testing.assert_allclose(np.sum(attention_map, axis=(1, 2)), [4.0, 4.0], rtol=1e-5)
  assert np.all(attention_map > 0) and np.std(np.asarray(attention_map)) > 0


def test_original_attention_init_is_the_release_init():
  scales = []
  for seed in range(3):
    block, variables, x = init_attention_block(seed)
    params = variables["params"]
    scale = float(params["scale"][0])
    scales.append(scale)
    # torch.rand(1): a draw from U[0, 1), so at initialisation out = x * (1 + scale * map).
    assert 0.0 <= scale < 1.0
    out, attention_map = jitted_apply(block)(variables, x, train=False)
    np.testing.assert_allclose(out, x * (1.0 + scale * attention_map[..., None]), rtol=1e-5)
    # PyTorch's default Conv3d init with fan-in C = 12: weights and bias in +-1/sqrt(12).
    bound = 1 / np.sqrt(12)
    for leaf in (params["heads"]["kernel"], params["heads"]["bias"]):
      assert np.all(np.abs(np.asarray(leaf)) <= bound)
    assert np.std(np.asarray(params["heads"]["kernel"])) > 0.5 * bound / np.sqrt(3)
  assert len(set(scales)) == 3  # drawn, not a constant


def test_original_attention_with_zero_scale_is_the_identity_and_learns_its_scale():
  block, variables, x = init_attention_block(scale_init=0.0)
  assert float(variables["params"]["scale"][0]) == 0.0
  out, attention_map = jitted_apply(block)(variables, x, train=False)
  np.testing.assert_array_equal(out, x)

  def loss(params):
    return jnp.sum(block.apply({"params": params}, x, train=False)[0] ** 2)

  grad = fast_jit(jax.grad(loss))(variables["params"])
  # d out / d scale = x * map: the scale leaves zero at once, and so does the projection.
  expected = 2.0 * np.sum(np.asarray(x) ** 2 * np.asarray(attention_map)[..., None])
  np.testing.assert_allclose(grad["scale"], [expected], rtol=1e-5)
  assert np.linalg.norm(grad["heads"]["kernel"]) == 0  # at scale 0 the map cannot matter yet


def test_original_attention_tower_with_zero_scale_equals_the_tower_without_attention():
  with_attention = build_model(
    tiny_config(image__attention="original", image__attention_scale_init=0.0)
  ).image
  without = build_model(tiny_config(image__attention_stages=())).image
  images = make_images(2)
  variables = fast_jit(functools.partial(with_attention.init, train=False))(
    jax.random.PRNGKey(0), images
  )
  image_params = variables["params"]
  assert {"stage0_attention", "stage1_attention"} <= set(image_params)
  out = jitted_apply(with_attention)(variables, images, train=False)
  plain = {k: v for k, v in image_params.items() if not k.endswith("_attention")}
  out_plain = jitted_apply(without)(
    {"params": plain, "batch_stats": variables["batch_stats"]}, images, train=False
  )
  np.testing.assert_allclose(out.regions, out_plain.regions, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out.global_emb, out_plain.global_emb, rtol=1e-6, atol=1e-6)
  # Maps of the 16 default heads over the 8x8 and 4x4 grids of the tiny layout.
  for name, side in (("stage0", 8), ("stage1", 4)):
    np.testing.assert_allclose(np.sum(out.attention_maps[name], axis=(1, 2)), [16.0] * 2, rtol=1e-5)
    assert out.attention_maps[name].shape == (2, side, side)


def test_original_attention_in_bfloat16_keeps_the_map_in_float32():
  block = SpatialSoftmaxAttention(num_heads=4, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 8)).astype(jnp.bfloat16)
  variables = fast_jit(functools.partial(block.init, train=False))(jax.random.PRNGKey(0), x)
  out, attention_map = jitted_apply(block)(variables, x, train=False)
  assert out.dtype == jnp.bfloat16 and attention_map.dtype == jnp.float32
  np.testing.assert_allclose(np.sum(attention_map, axis=(1, 2)), [4.0, 4.0], rtol=1e-5)


# ------------------------------------------------------ the untied MLM head and the MLM loss


def test_mask_id_is_the_tokenizers():
  # Read from the source: importing data_pipeline.tokenizer would load TensorFlow (~9 s).
  source = Path(__file__).parents[1] / "data_pipeline" / "tokenizer.py"
  assignments = {
    target.id: node.value
    for node in ast.parse(source.read_text()).body
    if isinstance(node, ast.Assign)
    for target in node.targets
    if isinstance(target, ast.Name)
  }
  assert ast.literal_eval(assignments["MASK_ID"]) == MASK_ID


def test_untied_head_has_v_minus_1_outputs_and_is_not_the_embedding():
  model = build_model(tiny_config(text__mlm_head="untied"))
  assert model.mlm_excluded_id == MASK_ID and model.text.num_mlm_classes == 39
  tokens = make_tokens([6, 9, 4, 12], TINY_TEXT_LENGTH, seed=1)
  variables = init_text_only(model, tokens)
  text = variables["params"]["text"]
  assert text["mlm_decoder"]["kernel"].shape == (16, 39) and "mlm_bias" not in text
  logits = jitted_apply(model)(variables, tokens, train=False, method="mlm_logits")
  assert logits.shape == (4, TINY_TEXT_LENGTH, 39) and logits.dtype == jnp.float32
  absent_id = next(i for i in range(5, 40) if i not in set(np.asarray(tokens).ravel()))

  def loss(text_params):
    logits = model.apply(
      {"params": {"text": text_params}}, tokens, train=False, method="mlm_logits"
    )
    targets = jnp.full(tokens.shape, absent_id)
    return mlm_loss(logits, targets, jnp.ones(tokens.shape), excluded_id=model.mlm_excluded_id)[0]

  grad = fast_jit(jax.grad(loss))(text)
  # The absent token's embedding row gets no gradient (untied: the output is not the embedding);
  # its class (absent_id - 1, past [MASK]) is the decoder column that the loss pulls up most.
  assert np.linalg.norm(np.asarray(grad["token_embedding"]["embedding"])[absent_id]) == 0
  bias_grad = np.asarray(grad["mlm_decoder"]["bias"])
  assert np.argmin(bias_grad) == absent_id - 1 and bias_grad[absent_id - 1] < 0


def test_mlm_loss_with_excluded_id_is_the_full_softmax_without_that_id():
  rng = np.random.default_rng(0)
  vocab, excluded = 9, MASK_ID
  logits = rng.standard_normal((2, 5, vocab - 1)).astype(np.float32)
  targets = np.array([[0, 3, 5, 8, 6], [7, 2, 5, 0, 8]])  # token ids, never the excluded one
  weights = np.array([[0, 1, 1, 1, 0.5], [1, 1, 0, 0, 2]], np.float32)
  loss, accuracy = mlm_loss(jnp.asarray(logits), targets, weights, excluded_id=excluded)
  # The same head seen over all V ids: the excluded id's logit -inf, the others in order.
  full = np.insert(logits, excluded, -np.inf, axis=-1)
  loss_full, accuracy_full = mlm_loss(jnp.asarray(full), targets, weights)
  np.testing.assert_allclose(loss, loss_full, rtol=1e-6)
  np.testing.assert_allclose(accuracy, accuracy_full, rtol=1e-6)
  # By hand: class of id t is t - (t > excluded).
  log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  classes = targets - (targets > excluded)
  nll = -np.take_along_axis(log_probs, classes[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(loss, np.sum(nll * weights) / np.sum(weights), rtol=1e-5)
  np.testing.assert_array_equal(
    token_ids_to_classes(jnp.arange(vocab), excluded), [0, 1, 2, 3, 4, 4, 5, 6, 7]
  )
  # Accuracy counts a hit when the argmax class is the target's class.
  hit_logits = np.zeros((1, 2, vocab - 1), np.float32)
  hit_logits[0, 0, 5] = hit_logits[0, 1, 5] = 1.0  # class 5 = token id 6
  _, accuracy = mlm_loss(jnp.asarray(hit_logits), np.array([[6, 5]]), np.ones((1, 2)), excluded)
  np.testing.assert_allclose(accuracy, 0.5)


def test_bert_tables_fold_into_a_plain_position_table():
  # The paper layout's extra rows: 32 position rows for max_len 24, a token-type table.
  bert = build_model(
    tiny_config(text__position_table_size=32, text__num_token_types=2, text__mlm_head="untied")
  )
  plain = build_model(tiny_config(text__mlm_head="untied"))
  tokens = make_tokens([5, 12, 8], 20, seed=4)
  variables = init_text_only(bert, tokens, seed=1)
  text = dict(variables["params"]["text"])
  assert text["position_embedding"].shape == (32, 16)
  assert text["token_type_embedding"].shape == (2, 16)
  # Row 0 of the type table is added to every token; rows past max_len are never read.
  folded = dict(text)
  folded["position_embedding"] = text["position_embedding"][:24] + text["token_type_embedding"][0]
  del folded["token_type_embedding"]
  out_bert = jitted_apply(bert)(variables, tokens, train=False, method="encode_text")
  out_plain = jitted_apply(plain)(
    {"params": {"text": folded}}, tokens, train=False, method="encode_text"
  )
  np.testing.assert_allclose(out_bert.sentence, out_plain.sentence, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_bert.words, out_plain.words, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- config errors


def test_config_errors_are_reported():
  with pytest.raises(ValueError, match="dtype"):
    build_model(tiny_config(dtype="float16"))
  with pytest.raises(ValueError, match="unknown image tower"):
    build_model(tiny_config(image__name="vit_h"))
  model = build_model(tiny_config())
  with pytest.raises(ValueError, match="max_len"):
    abstract_variables(model, TINY_IMAGE_SIZE, 25)
  bad_stage = build_model(tiny_config(image__region_stage=3))
  with pytest.raises(ValueError, match="out of range"):
    abstract_variables(bad_stage, TINY_IMAGE_SIZE, TINY_TEXT_LENGTH)
  for override, message in (
    ({"image__attention": "cbam"}, "attention must be one of"),
    ({"text__mlm_head": "shared"}, "mlm_head must be one of"),
    ({"text__position_table_size": 20}, "position_table_size 20 < max_len 24"),
  ):
    with pytest.raises(ValueError, match=message):
      abstract_variables(build_model(tiny_config(**override)), TINY_IMAGE_SIZE, TINY_TEXT_LENGTH)


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 2), (3, 2, 4), (1, 2, 4), (3, 1, 5)])
def test_square_conv_as_a_matmul_equals_flax_conv(kernel, stride, size):
  """`SquareConv` has `nn.Conv`'s parameter (same name, shape and initial values) and, run as
  patches times kernel on a small map, the same outputs and gradients."""
  import flax.linen as nn

  from jimte.models.image import SquareConv, conv_kernel_init

  x = jax.random.normal(jax.random.key(0), (3, size, size, 6))
  reference = nn.Conv(
    5,
    (kernel, kernel),
    strides=(stride, stride),
    padding=[(kernel // 2, kernel // 2)] * 2,
    use_bias=False,
    kernel_init=conv_kernel_init,
  )
  params = reference.init(jax.random.key(1), x)
  for positions in (0, 10**6):  # always lax.conv / always the matmul
    conv = SquareConv(5, kernel, stride=stride, matmul_max_positions=positions)
    mine = conv.init(jax.random.key(1), x)
    np.testing.assert_array_equal(mine["params"]["kernel"], params["params"]["kernel"])

    def loss(p, x, module):
      return jnp.sum(jnp.sin(module.apply(p, x)))

    np.testing.assert_allclose(conv.apply(params, x), reference.apply(params, x), atol=1e-5)
    grad = jax.grad(loss, argnums=(0, 1))
    for a, b in zip(grad(params, x, conv), grad(params, x, reference), strict=True):
      for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def test_local_norm_puts_regions_and_words_on_a_sphere_and_leaves_the_rest():
  """model.local_norm = s: the same parameters give regions and words of norm sqrt(s) in the raw
  features' directions; global and sentence vectors unchanged; a bad value names its key."""
  raw, normed = build_model(tiny_config()), build_model(tiny_config(local_norm=9.0))
  variables = init_variables(raw, jax.random.key(0), TINY_IMAGE_SIZE, TINY_TEXT_LENGTH)
  images = jax.random.normal(jax.random.key(1), (2, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 1))
  tokens = jnp.asarray(make_tokens([5, 12], TINY_TEXT_LENGTH))
  a = raw.apply(variables, images, tokens, train=False)
  b = normed.apply(variables, images, tokens, train=False)
  for name in ("regions", "words"):
    x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
    nonzero = np.linalg.norm(x, axis=-1) > 0  # a zero feature (a dead ReLU cell) stays zero
    assert nonzero.mean() > 0.5
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1)[nonzero], 3.0, rtol=1e-5)
    unit = x[nonzero] / np.linalg.norm(x[nonzero], axis=-1, keepdims=True)
    np.testing.assert_allclose(y[nonzero], 3.0 * unit, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y[~nonzero], 0.0)
  np.testing.assert_array_equal(a.image_global, b.image_global)
  np.testing.assert_array_equal(a.sentence, b.sentence)
  text = normed.apply(variables, tokens, train=False, method=normed.encode_text)
  np.testing.assert_array_equal(text.words, b.words)
  with pytest.raises(ValueError, match="model.local_norm"):
    build_model(tiny_config(local_norm=-1.0))


def test_region_mean_global_and_word_mean_sentence_are_the_means_of_the_local_features():
  """global_pooling="region_mean": the global vector is the mean of the region vectors and no stage
  after the region stage is built; sentence_pooling="word_mean": the sentence vector is the masked
  mean of the word vectors (PAD words excluded). So the sentence score is built from the local
  features themselves."""
  model = build_model(
    tiny_config(image__global_pooling="region_mean", text__sentence_pooling="word_mean")
  )
  variables = init_variables(model, jax.random.key(0), TINY_IMAGE_SIZE, TINY_TEXT_LENGTH)
  assert sorted(k for k in variables["params"]["image"] if k.startswith("stage")) == [
    "stage0_attention",
    "stage0_block0",
    "stage1_attention",
    "stage1_block0",
  ]  # the tiny tower's 3 stages, regions from stage 1 (-2): stage 2 is not built
  assert "global_head" not in variables["params"]["image"]
  images = jax.random.normal(jax.random.key(1), (2, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 1))
  lengths = [5, 12]
  tokens = jnp.asarray(make_tokens(lengths, TINY_TEXT_LENGTH))
  out = model.apply(variables, images, tokens, train=False)
  np.testing.assert_allclose(out.image_global, np.asarray(out.regions).mean((1, 2)), rtol=1e-5)
  for row, length in enumerate(lengths):  # alignment words: positions 1 .. length - 1 (EOS incl.)
    words = np.asarray(out.words[row, : length - 1])
    np.testing.assert_allclose(out.sentence[row], words.mean(0), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="global_pooling must be one of"):
    abstract_variables(
      build_model(tiny_config(image__global_pooling="max")), TINY_IMAGE_SIZE, TINY_TEXT_LENGTH
    )


def test_other_pooling_pairs_first_and_mean_only():
  from jimte.evaluate.encode import other_pooling

  for pooling, other in (("first", "mean"), ("mean", "first"), ("word_mean", None)):
    model = build_model(tiny_config(text__sentence_pooling=pooling))
    assert other_pooling(model) == other
