"""The joint JoImTeRNet model (image tower + text tower) and how it is built from a config.

Model config (an `ml_collections.ConfigDict`; see `paper_model_config` and
`small_model_config`):

  embed_dim           int    dimension D shared by regions, global image vector, words, sentence
  local_norm          float  0 (paper): raw region and word features; s > 0: both L2-normalised to
                             norm sqrt(s), so the region-word attention's logits are s * cosine
  dtype               str    compute dtype, "float32" or "bfloat16" (parameters are always float32)
  remat               bool   recompute image blocks / text layers in the backward pass
  image.name          str    image tower in `IMAGE_TOWERS` ("joimternet_resnet")
  image.widths        tuple  channels per stage (paper: 16, 32, 64, 128, 256, 512)
  image.stem_width    int    channels of the 7x7 stride-4 stem (paper: 8)
  image.blocks_per_stage int BasicBlocks per stage (paper: 2)
  image.first_stage_stride int  1 or 2 (paper: 2)
  image.attention_stages tuple  stage indices followed by soft attention, negatives from the end
  image.region_stage  int    stage whose grid gives the regions (paper: -2 -> S / 128 regions)
  image.global_pool_size int side of the adaptive pool before the global head (paper: 2)
  image.global_pooling str   "paper" (that head on the last stage) or "region_mean" (the mean of the
                             region vectors; no stage after the region stage)
  image.attention     str    soft-attention block: "original" (paper: 16 heads, softmax over space,
                             `x + scale * x * m`) or "sigmoid_gate" (`x * (1 + m)`)
  image.attention_heads int  heads of the original block (paper: 16)
  image.attention_scale_init float or None  initial scale (None: U[0, 1), as the original)
  image.attention_hidden int or None  mask-branch channels of the sigmoid gate
  image.region_head_bias bool  bias in the region head's 1x1 conv (paper: False)
  image.weight_init   str    region and global heads: "original" (paper: Kaiming normal fan-out on
                             the region conv, PyTorch's default uniform on the Linear) or "lecun"
  image.bn_momentum   float  BatchNorm running-average momentum (0.9 = PyTorch momentum 0.1)
  image.anatomy_head  bool   embed anatomical boxes too (RRA-VL, docs/alc_itr.md; paper: False)
  image.conv_kernel_grad_mb float  the convs' kernel gradients summed over pieces of the batch of at
                             most this many MB per device (the same sums, faster on XLA:CPU; 0: off;
                             -1, the default: 16 on CPU backends, off on others)
  text.name           str    text tower in `TEXT_TOWERS` ("bert")
  text.vocab_size     int    must equal the SentencePiece model's vocabulary size
  text.max_len        int    longest token sequence (paper: 160)
  text.position_table_size int or None  rows of the position table (paper: 512; None: max_len)
  text.num_token_types int   rows of BERT's token-type table (paper: 2; 0: none)
  text.layer_norm_epsilon float  (paper: 1e-12, BERT's)
  text.mlm_head       str    "untied" (paper: V - 1 outputs, no [MASK]) or "tied" (embedding.T)
  text.num_layers, text.num_heads, text.width, text.mlp_dim   Transformer shape (paper 3/8/512/2048)
  text.dropout, text.attention_dropout   float   dropout rates (paper 0.1)
  text.sentence_pooling str  "first" (paper), "mean" (the head on the masked mean of the alignment
                             words' states) or "word_mean" (the mean of the word vectors, no head)
  text.weight_init    str    "original" (paper: normal 0.02 in the encoder, PyTorch's default
                             uniform on the word, sentence and MLM heads) or "bert" (truncated 0.02)
  text.frozen_pad_row bool   PAD row zero and never updated, `nn.Embedding(padding_idx=0)` (paper)

The joint module's top-level parameter keys are exactly `image` and `text` (so that optimizers
can be built per tower); BatchNorm statistics live in the `batch_stats` collection, under
`image`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jimte.models.image import ImageOutput, JoImTeRNetResNet
from jimte.models.text import BertTextEncoder, TextOutput

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class JointOutput:
  """Both towers' outputs for a batch of (image, report) pairs; see docs/contracts.md.

  Attributes:
      image_global: [B, D] float32 global image embeddings.
      regions: [B, H, W, D] float32 region features.
      sentence: [B, D] float32 sentence embeddings.
      words: [B, L-1, D] float32 word features (positions 1..L-1).
      word_mask: [B, L-1] bool, True for non-PAD words.
      attention_maps: name -> [B, h, w] float32 soft-attention maps of the image tower.
      anatomy: [B, K, D] float32 anatomical region embeddings (image towers with an anatomy
          head), else None.
  """

  image_global: jax.Array
  regions: jax.Array
  sentence: jax.Array
  words: jax.Array
  word_mask: jax.Array
  attention_maps: dict[str, jax.Array]
  anatomy: jax.Array | None = None


class JoImTeRNet(nn.Module):
  """Image tower + text tower. Any towers with the `ImageOutput` / `TextOutput` contracts fit.

  Attributes:
      image: image tower, called as `image(images, train) -> ImageOutput`.
      text: text tower, called as `text(tokens, train) -> TextOutput`, with a method
          `mlm_logits(tokens, train) -> [B, L, C]` and an attribute `mlm_excluded_id` (the
          token id without an MLM class, so C = V - 1, or None and C = V).
  """

  image: nn.Module
  text: nn.Module
  local_norm: float = 0.0  # > 0: regions and words L2-normalised to norm sqrt(local_norm)

  def _local(self, features: jax.Array) -> jax.Array:
    """Region or word features as the region-word objective sees them: raw (local_norm = 0, the
    contract), or on the sphere of radius sqrt(local_norm), so that the word softmax's logits
    are local_norm * cosine, bounded by +-local_norm (raw ones reached +-300; docs/ablations.md)."""
    if not self.local_norm:
      return features
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
    return features * (float(self.local_norm) ** 0.5 / jnp.maximum(norm, 1e-6))

  @property
  def mlm_excluded_id(self) -> int | None:
    """The token id the MLM logits have no column for (pass it to `losses.mlm_loss`), or None."""
    return self.text.mlm_excluded_id

  def encode_image(
    self, images: jax.Array, train: bool, boxes: jax.Array | None = None
  ) -> ImageOutput:
    """Images float32 [B, S, S, 1] in [-1, 1] -> global embedding, regions, attention maps (and
    the embeddings of the anatomical `boxes` [B, K, 4] for towers with an anatomy head)."""
    out = self.image(images, train) if boxes is None else self.image(images, train, boxes)
    return out.replace(regions=self._local(out.regions)) if self.local_norm else out

  def encode_text(self, tokens: jax.Array, train: bool) -> TextOutput:
    """Tokens int32 [B, L] -> sentence, words, word mask, hidden states."""
    out = self.text(tokens, train)
    return out.replace(words=self._local(out.words)) if self.local_norm else out

  def mlm_logits(self, tokens: jax.Array, train: bool) -> jax.Array:
    """Masked tokens int32 [B, L] -> float32 MLM logits [B, L, C] (text tower only): C = V - 1
    without a column for `mlm_excluded_id`, or V when that is None."""
    return self.text.mlm_logits(tokens, train)

  def __call__(
    self, images: jax.Array, tokens: jax.Array, train: bool, boxes: jax.Array | None = None
  ) -> JointOutput:
    """Encodes a batch of pairs with both towers (`boxes`: see `encode_image`)."""
    image_out = self.encode_image(images, train, boxes)
    text_out = self.encode_text(tokens, train)
    return JointOutput(
      image_global=image_out.global_emb,
      regions=image_out.regions,
      sentence=text_out.sentence,
      words=text_out.words,
      word_mask=text_out.word_mask,
      attention_maps=image_out.attention_maps,
      anatomy=image_out.anatomy,
    )


# ----------------------------------------------------------------------------- building from config


def _build_joimternet_resnet(
  config: ml_collections.ConfigDict, embed_dim: int, dtype: Any, remat: bool, batch_shards: int = 1
) -> nn.Module:
  """The paper's ResNet image tower from `model_config.image`."""
  return JoImTeRNetResNet(
    embed_dim=embed_dim,
    widths=tuple(config.widths),
    stem_width=config.get("stem_width"),
    blocks_per_stage=config.get("blocks_per_stage", 2),
    first_stage_stride=config.first_stage_stride,
    attention_stages=tuple(config.attention_stages),
    region_stage=config.region_stage,
    global_pool_size=config.get("global_pool_size", 2),
    global_pooling=config.get("global_pooling", "paper"),
    attention=config.get("attention", "original"),
    attention_heads=config.get("attention_heads", 16),
    attention_scale_init=config.get("attention_scale_init"),
    attention_hidden=config.get("attention_hidden"),
    region_head_bias=config.get("region_head_bias", False),
    weight_init=config.get("weight_init", "lecun"),
    bn_momentum=config.get("bn_momentum", 0.9),
    anatomy_head=config.get("anatomy_head", False),
    conv_matmul_max_positions=config.get("conv_matmul_max_positions", 4),
    conv_kernel_grad_mb=config.get("conv_kernel_grad_mb", 0.0),
    batch_shards=batch_shards,
    dtype=dtype,
    remat=remat,
  )


def _build_bert(
  config: ml_collections.ConfigDict, embed_dim: int, dtype: Any, remat: bool, batch_shards: int = 1
) -> nn.Module:
  """The BERT-style text tower from `model_config.text`."""
  del batch_shards  # nothing in the text tower depends on how the batch is split
  return BertTextEncoder(
    embed_dim=embed_dim,
    vocab_size=config.vocab_size,
    max_len=config.max_len,
    num_layers=config.num_layers,
    num_heads=config.num_heads,
    width=config.width,
    mlp_dim=config.mlp_dim,
    dropout=config.dropout,
    attention_dropout=config.get("attention_dropout", config.dropout),
    position_table_size=config.get("position_table_size", 512),
    num_token_types=config.get("num_token_types", 2),
    layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-12),
    mlm_head=config.get("mlm_head", "untied"),
    sentence_pooling=config.get("sentence_pooling", "first"),
    weight_init=config.get("weight_init", "bert"),
    frozen_pad_row=config.get("frozen_pad_row", False),
    dtype=dtype,
    remat=remat,
  )


# (tower config, embed_dim, dtype, remat, batch_shards) -> module
TowerBuilder = Callable[[ml_collections.ConfigDict, int, Any, bool, int], nn.Module]
IMAGE_TOWERS: dict[str, TowerBuilder] = {"joimternet_resnet": _build_joimternet_resnet}
TEXT_TOWERS: dict[str, TowerBuilder] = {"bert": _build_bert}


def _lookup(registry: dict[str, TowerBuilder], name: str, kind: str) -> TowerBuilder:
  if name not in registry:
    raise ValueError(f"unknown {kind} tower {name!r}; known: {sorted(registry)}")
  return registry[name]


def build_model(model_config: ml_collections.ConfigDict, batch_shards: int = 1) -> JoImTeRNet:
  """Builds the joint model described by `model_config` (fields in this module's docstring);
  `batch_shards`: how many devices a training batch is split over (`sharding.num_batch_shards`)."""
  if model_config.dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {model_config.dtype!r}")
  dtype = DTYPES[model_config.dtype]
  remat = bool(model_config.get("remat", False))
  image_builder = _lookup(
    IMAGE_TOWERS, model_config.image.get("name", "joimternet_resnet"), "image"
  )
  text_builder = _lookup(TEXT_TOWERS, model_config.text.get("name", "bert"), "text")
  local_norm = model_config.get("local_norm", 0.0)
  if isinstance(local_norm, bool) or not isinstance(local_norm, (int, float)) or local_norm < 0:
    raise ValueError(f"model.local_norm: {local_norm!r} must be a number >= 0")
  return JoImTeRNet(
    image=image_builder(model_config.image, model_config.embed_dim, dtype, remat, batch_shards),
    text=text_builder(model_config.text, model_config.embed_dim, dtype, remat, batch_shards),
    local_norm=float(local_norm),
  )


def init_variables(
  model: JoImTeRNet, rng: jax.Array, image_size: int, text_length: int, batch_size: int = 1
) -> dict[str, Any]:
  """Initialises all of the model's variables (`params` and `batch_stats`) from dummy inputs.

  Every parameter, MLM head included, is created; shapes do not depend on `batch_size`, and on
  `image_size` / `text_length` only through validity (`text_length <= max_len`).
  """
  images = jnp.zeros((batch_size, image_size, image_size, 1), jnp.float32)
  tokens = jnp.zeros((batch_size, text_length), jnp.int32)
  return dict(model.init({"params": rng}, images, tokens, train=False))


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter pytree."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------------- configs


def paper_model_config() -> ml_collections.ConfigDict:
  """The original release's towers: 2048 px input -> 16x16 regions of dim 512; 3-layer BERT.

  Layer for layer the original's (`JoImTeR/model_img.py`, `model_txt.py`): an 8-channel stem, its
  16-head soft attention, a bias-free region head; BERT's position and token-type tables and
  LayerNorm epsilon, and the untied V - 1 MLM head; its initialisation of every layer and its
  frozen zero PAD row. At the original's vocabulary (8,411 ids) the
  towers have its parameter counts exactly (`benchmarks/param_counts.py`).
  `text.vocab_size` must be set to the tokenizer's vocabulary size.
  """
  return ml_collections.ConfigDict(
    dict(
      embed_dim=512,
      local_norm=0.0,
      dtype="float32",
      remat=False,
      image=dict(
        name="joimternet_resnet",
        widths=(16, 32, 64, 128, 256, 512),
        stem_width=8,
        blocks_per_stage=2,
        first_stage_stride=2,
        attention_stages=(-3, -2),
        region_stage=-2,
        global_pool_size=2,
        global_pooling="paper",
        attention="original",
        attention_heads=16,
        attention_scale_init=None,
        attention_hidden=None,
        region_head_bias=False,
        weight_init="original",
        bn_momentum=0.9,
        anatomy_head=False,
        # -1: the kernel gradients summed over pieces of <= 16 MB per device on CPU backends (the
        # same sums; the paper tower's ITM step at 1024 px, B=32 ran 8.73 -> 7.97 s on 2 cores,
        # README), whole elsewhere (not measured on GPU / TPU, where the pieces would serialise).
        conv_kernel_grad_mb=-1.0,
      ),
      text=dict(
        name="bert",
        vocab_size=8000,
        max_len=160,
        num_layers=3,
        num_heads=8,
        width=512,
        mlp_dim=2048,
        dropout=0.1,
        attention_dropout=0.1,
        position_table_size=512,
        num_token_types=2,
        layer_norm_epsilon=1e-12,
        mlm_head="untied",
        sentence_pooling="first",
        weight_init="original",
        frozen_pad_row=True,
      ),
    )
  )


def small_model_config() -> ml_collections.ConfigDict:
  """A CPU-sized model: 128 px input -> 8x8 regions of dim 128; 2-layer, width-128 text encoder.

  Keeps the blocks the built-in demo was measured with (README), not the original's: the sigmoid
  gate attention, a region head with bias, a 16-channel stem, a tied MLM head, a position table of
  `max_len` rows, no token-type table, LayerNorm epsilon 1e-6, Flax's and BERT's initialisers, a
  trained PAD row (docs/fidelity.md).
  `text.vocab_size` must be set to the tokenizer's vocabulary size.
  """
  config = paper_model_config()
  config.image.attention = "sigmoid_gate"
  config.image.region_head_bias = True
  config.image.weight_init = "lecun"
  config.text.weight_init = "bert"
  config.text.frozen_pad_row = False
  config.text.position_table_size = None
  config.text.num_token_types = 0
  config.text.layer_norm_epsilon = 1e-6
  config.text.mlm_head = "tied"
  config.embed_dim = 128
  config.image.widths = (16, 32, 64, 128)
  config.image.stem_width = 16
  config.image.first_stage_stride = 1
  config.text.vocab_size = 1000
  config.text.max_len = 64
  config.text.num_layers = 2
  config.text.num_heads = 4
  config.text.width = 128
  config.text.mlp_dim = 512
  return config
