"""The JoImTeRNet text tower: a BERT-style encoder trained from scratch on reports.

Token embedding + learned position embedding, LayerNorm, dropout; then post-LayerNorm Transformer
layers (multi-head self-attention and a GELU feed-forward block, each followed by dropout, a
residual add and LayerNorm). Padding (token id `PAD_ID`) is masked out of every attention, so
valid positions do not depend on how much padding follows them. Heads:

* word head: Dense to `embed_dim` on every position after the first (the alignment words);
* sentence head: Dense to `embed_dim` on a pooled vector, see `sentence_pooling`;
* MLM head (BERT style): Dense + GELU + LayerNorm, then either the original's own output layer
  with V - 1 outputs, every token id but `[MASK]` (`mlm_head="untied"`, paper), or the transposed
  token embedding matrix plus a per-token bias, V outputs (`mlm_head="tied"`).

The paper layout also keeps BERT's 512-row position table and its two-row token-type table
(row 0 added to every token, as BERT does for all-zero token types), so the tower has the
original's parameters one for one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jimte.models.image import torch_default_bias_init, torch_default_kernel_init

Dtype = Any

PAD_ID = 0
# The `[MASK]` id of the token layout (docs/contracts.md, `data_pipeline.tokenizer.MASK_ID`): the
# one id an MLM target never is, so the untied head leaves it out.
MASK_ID = 4
SENTENCE_POOLINGS = ("first", "mean", "word_mean")
# The two poolings that feed the same sentence head (the original offers both, `pool='cls'|'avg'`).
HEAD_POOLINGS = ("first", "mean")


def other_head_pooling(pooling: str) -> str | None:
  """The other of `HEAD_POOLINGS` (the same sentence head on the other input), or None for a
  pooling without a sentence head ("word_mean")."""
  if pooling not in HEAD_POOLINGS:
    return None
  return next(p for p in HEAD_POOLINGS if p != pooling)


MLM_HEADS = ("tied", "untied")
# "bert": truncated normal 0.02 on every layer; "original": the release's (see `BertTextEncoder`).
TEXT_INITS = ("bert", "original")

# BERT's initialisation: truncated normal with standard deviation 0.02.
bert_init = nn.initializers.truncated_normal(0.02)
# Hugging Face's BERT (`initializer_range=0.02`): an untruncated normal of standard deviation 0.02.
hf_bert_init = nn.initializers.normal(0.02)


def zero_row_init(init: nn.initializers.Initializer, row: int) -> nn.initializers.Initializer:
  """`init` with row `row` zeroed: `nn.Embedding(padding_idx=row)` at initialisation."""

  def initialise(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype).at[row].set(0)

  return initialise


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Float32 mean of x [B, T, C] over the positions where mask [B, T]."""
  weights = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(x.astype(jnp.float32) * weights, axis=1)
  return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


@flax.struct.dataclass
class TextOutput:
  """What the text tower returns (a pytree, so it passes through jit).

  Attributes:
      sentence: [B, D] float32 sentence embedding.
      words: [B, L-1, D] float32 word features of positions 1..L-1 (first token dropped).
      word_mask: [B, L-1] bool, True where the token at positions 1..L-1 is not PAD.
      hidden: [B, L, W] final encoder states, in the compute dtype.
  """

  sentence: jax.Array
  words: jax.Array
  word_mask: jax.Array
  hidden: jax.Array


def exact_gelu(x: jax.Array) -> jax.Array:
  """GELU with the exact erf form, as in BERT."""
  return nn.gelu(x, approximate=False)


class TransformerLayer(nn.Module):
  """One post-LayerNorm Transformer encoder layer (BERT layout)."""

  num_heads: int
  mlp_dim: int
  dropout: float = 0.1
  attention_dropout: float = 0.1
  layer_norm_epsilon: float = 1e-12
  kernel_init: nn.initializers.Initializer = bert_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array, train: bool) -> jax.Array:
    """x: [B, L, W]; attention_mask: [B, 1, L, L] bool (True = may attend)."""
    width = x.shape[-1]
    attended = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dropout_rate=self.attention_dropout,
      deterministic=not train,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      force_fp32_for_softmax=True,
      name="attention",
    )(x, x, mask=attention_mask)
    attended = nn.Dropout(self.dropout, deterministic=not train)(attended)
    x = nn.LayerNorm(
      self.layer_norm_epsilon,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="attention_norm",
    )(x + attended)
    y = nn.Dense(
      self.mlp_dim,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="mlp_in",
    )(x)
    y = exact_gelu(y)
    y = nn.Dense(
      width,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="mlp_out",
    )(y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return nn.LayerNorm(
      self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp_norm"
    )(x + y)


class BertTextEncoder(nn.Module):
  """BERT-style text encoder with word, sentence and MLM heads.

  Attributes:
      embed_dim: dimension D of the word features and the sentence embedding.
      vocab_size: number of token ids (must match the tokenizer).
      max_len: longest token sequence L accepted (paper 160).
      position_table_size: rows of the learned position table, >= `max_len` (None: `max_len`;
          paper 512, BERT's `max_position_embeddings`; rows past `max_len` are never read).
      num_token_types: rows of BERT's token-type table, whose row 0 is added to every token
          (paper 2; 0: no table).
      num_layers, num_heads, width, mlp_dim: Transformer shape (paper: 3, 8, 512, 2048).
      dropout: dropout on embeddings, attention output and feed-forward output (paper 0.1).
      attention_dropout: dropout on the attention probabilities.
      layer_norm_epsilon: epsilon of every LayerNorm (paper 1e-12, BERT's).
      mlm_head: "untied" (paper): a Dense with V - 1 outputs, class k standing for token id
          k + (k >= mask_id), i.e. every id but `mask_id`; "tied": the token embedding matrix
          transposed plus a bias, V outputs.
      mask_id: the id the untied head leaves out (`MASK_ID`).
      weight_init: one of `TEXT_INITS`. "bert": truncated normal 0.02 on every kernel and table.
          "original" (paper), the release's: Hugging Face's `BertModel` init (untruncated normal
          0.02) inside the encoder, and PyTorch's default `nn.Linear` init (kernel and bias
          uniform in +-1/sqrt(fan_in)) on the layers outside it: word head (`word_fc`),
          sentence head (`sent_fc`), MLM transform and decoder.
      frozen_pad_row: the PAD row of the token table starts at zero and never receives a
          gradient (`nn.Embedding(padding_idx=0)`, paper), so AdamW leaves it at zero.
      sentence_pooling: "first": the sentence head reads the first token ([BOS], playing [CLS]);
          "mean": it reads the masked mean of the final states over the alignment words, i.e.
          positions 1..L-1 that are not PAD (the first token excluded, [EOS] included), so the
          sentence vector pools exactly the positions the word features cover; "word_mean": no
          sentence head, the sentence vector is the masked mean of the word vectors themselves
          (so that the sentence score is a sum of region-word scores; docs/ablations.md).
      dtype: compute dtype (e.g. bfloat16); parameters stay in `param_dtype`.
      param_dtype: parameter dtype (float32).
      remat: recompute each Transformer layer in the backward pass.

  `__call__` uses the `'dropout'` rng when `train` is True.
  """

  embed_dim: int
  vocab_size: int
  max_len: int = 160
  num_layers: int = 3
  num_heads: int = 8
  width: int = 512
  mlp_dim: int = 2048
  dropout: float = 0.1
  attention_dropout: float = 0.1
  position_table_size: int | None = 512
  num_token_types: int = 2
  layer_norm_epsilon: float = 1e-12
  mlm_head: str = "untied"
  mask_id: int = MASK_ID
  sentence_pooling: str = "first"
  weight_init: str = "bert"
  frozen_pad_row: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False

  def setup(self):
    if self.sentence_pooling not in SENTENCE_POOLINGS:
      raise ValueError(
        f"sentence_pooling must be one of {SENTENCE_POOLINGS}, got {self.sentence_pooling!r}"
      )
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} not divisible by num_heads {self.num_heads}")
    if self.mlm_head not in MLM_HEADS:
      raise ValueError(f"mlm_head must be one of {MLM_HEADS}, got {self.mlm_head!r}")
    if not 0 <= self.mask_id < self.vocab_size:
      raise ValueError(f"mask_id {self.mask_id} outside the vocabulary of {self.vocab_size}")
    position_rows = self.position_table_size or self.max_len
    if position_rows < self.max_len:
      raise ValueError(f"position_table_size {position_rows} < max_len {self.max_len}")
    if self.num_token_types < 0:
      raise ValueError(f"num_token_types must be >= 0, got {self.num_token_types}")
    if self.weight_init not in TEXT_INITS:
      raise ValueError(f"weight_init must be one of {TEXT_INITS}, got {self.weight_init!r}")
    encoder_init = hf_bert_init if self.weight_init == "original" else bert_init
    embedding_init = encoder_init
    if self.frozen_pad_row:
      embedding_init = zero_row_init(encoder_init, PAD_ID)
    self.token_embedding = nn.Embed(
      self.vocab_size,
      self.width,
      embedding_init=embedding_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    self.position_embedding = self.param(
      "position_embedding", encoder_init, (position_rows, self.width), self.param_dtype
    )
    if self.num_token_types:
      self.token_type_embedding = self.param(
        "token_type_embedding", encoder_init, (self.num_token_types, self.width), self.param_dtype
      )
    self.embedding_norm = nn.LayerNorm(
      self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype
    )
    self.embedding_dropout = nn.Dropout(self.dropout)
    # For lifted modules static_argnums counts `self` as argument 0: `train` is argument 3.
    layer_cls = nn.remat(TransformerLayer, static_argnums=(3,)) if self.remat else TransformerLayer
    self.layers = [
      layer_cls(
        num_heads=self.num_heads,
        mlp_dim=self.mlp_dim,
        dropout=self.dropout,
        attention_dropout=self.attention_dropout,
        layer_norm_epsilon=self.layer_norm_epsilon,
        kernel_init=encoder_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"layer{i}",
      )
      for i in range(self.num_layers)
    ]
    self.word_head = self._head(self.embed_dim)
    self.sentence_head = self._head(self.embed_dim)
    self.mlm_transform = self._head(self.width)
    self.mlm_norm = nn.LayerNorm(
      self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype
    )
    if self.mlm_head == "untied":
      self.mlm_decoder = self._head(self.vocab_size - 1)
    else:
      self.mlm_bias = self.param(
        "mlm_bias", nn.initializers.zeros, (self.vocab_size,), self.param_dtype
      )

  def _head(self, features: int) -> nn.Dense:
    """A head outside the encoder, reading `width` inputs, with the configured `weight_init`."""
    inits = dict(kernel_init=bert_init)
    if self.weight_init == "original":
      inits = dict(
        kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(self.width)
      )
    return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, **inits)

  def _token_table(self) -> jax.Array:
    """The token table as the encoder reads it: its PAD row replaced by zeros when frozen, so that
    row never receives a gradient (neither from the lookup nor from the tied MLM head)."""
    table = self.token_embedding.embedding
    if self.frozen_pad_row:
      table = table.at[PAD_ID].set(0)
    return table

  @property
  def mlm_excluded_id(self) -> int | None:
    """The token id the MLM head has no output for (untied head), or None (tied head)."""
    return self.mask_id if self.mlm_head == "untied" else None

  @property
  def num_mlm_classes(self) -> int:
    """Width of the MLM logits: V - 1 (untied head) or V (tied head)."""
    return self.vocab_size - 1 if self.mlm_head == "untied" else self.vocab_size

  def encode(self, tokens: jax.Array, train: bool) -> jax.Array:
    """Runs the encoder on int tokens [B, L] and returns the final states [B, L, W]."""
    if tokens.ndim != 2:
      raise ValueError(f"expected tokens [B, L], got {tokens.shape}")
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
    valid = tokens != PAD_ID
    # Keys are masked by padding; every query row keeps its valid keys, so padded queries never
    # see an all-masked row, and valid positions are independent of the padding after them.
    attention_mask = nn.make_attention_mask(jnp.ones_like(valid), valid)
    x = jnp.take(self._token_table().astype(self.dtype), tokens, axis=0)
    x = x + self.position_embedding[None, :length].astype(self.dtype)
    if self.num_token_types:
      x = x + self.token_type_embedding[0].astype(self.dtype)  # every token has type 0
    x = self.embedding_norm(x)
    x = self.embedding_dropout(x, deterministic=not train)
    for layer in self.layers:
      x = layer(x, attention_mask, train)
    return x

  def mlm_logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
    """MLM head on final states [B, L, W]: float32 logits [B, L, `num_mlm_classes`] (the classes
    are the token ids without `mlm_excluded_id`, in order)."""
    x = exact_gelu(self.mlm_transform(hidden))
    x = self.mlm_norm(x)
    if self.mlm_head == "untied":
      return self.mlm_decoder(x).astype(jnp.float32)
    logits = jnp.dot(x, self._token_table().astype(self.dtype).T)
    return logits.astype(jnp.float32) + self.mlm_bias.astype(jnp.float32)

  def mlm_logits(self, tokens: jax.Array, train: bool) -> jax.Array:
    """Float32 MLM logits [B, L, `num_mlm_classes`] for (masked) tokens [B, L]."""
    return self.mlm_logits_from_hidden(self.encode(tokens, train))

  def __call__(self, tokens: jax.Array, train: bool) -> TextOutput:
    """Encodes tokens [B, L] (`[BOS] w1 .. wn [EOS] [PAD]..`) into a `TextOutput`."""
    hidden = self.encode(tokens, train)
    word_mask = tokens[:, 1:] != PAD_ID
    words = self.word_head(hidden[:, 1:])
    if self.sentence_pooling == "first":
      sentence = self.sentence_head(hidden[:, 0])
    elif self.sentence_pooling == "mean":
      sentence = self.sentence_head(_masked_mean(hidden[:, 1:], word_mask).astype(self.dtype))
    else:  # "word_mean"
      sentence = _masked_mean(words, word_mask)
      if self.is_initializing():  # the tree keeps its sentence head (unused), like every pooling's
        self.sentence_head(hidden[:, 0])
    if self.is_initializing():
      # Create the MLM head's parameters too, so that one `init` call covers the tower.
      self.mlm_logits_from_hidden(hidden)
    return TextOutput(
      sentence=sentence.astype(jnp.float32),
      words=words.astype(jnp.float32),
      word_mask=word_mask,
      hidden=hidden,
    )
