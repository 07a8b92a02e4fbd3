"""Tests of jimte.models: shapes, parameter tree, BatchNorm state, padding, bf16, remat, MLM."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jimte.models import (
  PAD_ID,
  JointOutput,
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


def test_paper_parameter_counts_per_tower():
  config = paper_model_config()
  model = build_model(config)
  params = abstract_variables(model, 256, 160)["params"]
  text = params["text"]
  # Tied MLM output: the only [V, W] matrix is the token embedding; the head adds a bias only.
  assert text["token_embedding"]["embedding"].shape == (8000, 512)
  assert set(text["mlm_transform"]) == {"kernel", "bias"}
  assert text["mlm_transform"]["kernel"].shape == (512, 512)
  assert text["mlm_bias"].shape == (8000,)
  assert text["position_embedding"].shape == (160, 512)
  # Global head reads the 2x2-pooled 512-channel grid.
  assert params["image"]["global_head"]["kernel"].shape == (4 * 512, 512)
  assert params["image"]["region_head"]["kernel"].shape == (1, 1, 256, 512)
  width, mlp, layers, vocab, max_len, embed = 512, 2048, 3, 8000, 160, 512
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


def test_attention_maps_lie_in_unit_interval_and_outputs_are_finite():
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
