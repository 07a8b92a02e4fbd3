"""The JoImTeRNet image tower: a ResNet for single-channel chest X-rays.

Layout (paper sizes in brackets, for a 2048 px input):

* stem: 7x7 conv, stride 4, BatchNorm, ReLU                  [2048 -> 512 px, 8 channels]
* stages: two BasicBlocks each; every stage's first block halves the grid (the first stage only
  when `first_stage_stride` is 2), with a 1x1 projection shortcut when the shape changes
                                                              [widths 16 .. 512, 512 -> 8 px]
* soft spatial attention after chosen stages: the original's `x + scale * x * m`, m a sum of
  per-head softmaxes over space (`attention="original"`), or a sigmoid gate `x * (1 + m)`,
  m in [0, 1] (`attention="sigmoid_gate"`)            [original, after the 128 and 256 stages]
* region head: 1x1 conv to `embed_dim` on the region stage  [16 x 16 regions of dim 512, no bias]
* global head: adaptive average pool of the last stage to 2x2, flatten, Dense to `embed_dim`
  (`global_pooling="paper"`), or the mean of the region vectors (`"region_mean"`, no stage after
  the region stage: the sentence score is then a sum of per-region scores, a CAM-style map)

The region grid is `S / (4 * 2**k)` for an S-pixel input, k the number of halving stages up to
and including the region stage (paper: S / 128, so 2048 px gives 16 x 16 regions).

Pure Flax linen: parameters live in `params`, BatchNorm running statistics in `batch_stats`
(updated only when `train=True` and `batch_stats` is passed as mutable).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jimte.anatomy.pooling import pool_boxes
from jimte.anatomy.regions import default_atlas
from jimte.models import conv_lowering

Dtype = Any

# He (Kaiming) normal on fan-out, the usual initialisation for ReLU ResNets.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


@flax.struct.dataclass
class ImageOutput:
  """What the image tower returns (a pytree, so it passes through jit).

  Attributes:
      global_emb: [B, D] float32 global image embedding.
      regions: [B, H, W, D] float32 region features on the region stage's grid.
      attention_maps: name ("stage<i>") -> [B, h, w] float32 soft-attention map: for
          "original" attention the sum of the heads' spatial softmaxes (it sums to the number of
          heads over the grid), for "sigmoid_gate" a gate in [0, 1].
      anatomy: [B, K, D] float32 anatomical region embeddings (towers with `anatomy_head`; K boxes,
          the 29 of the default atlas unless given), else None.
  """

  global_emb: jax.Array
  regions: jax.Array
  attention_maps: dict[str, jax.Array]
  anatomy: jax.Array | None = None


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
  """Average-pools a [B, H, W, C] grid to [B, output_size, output_size, C] for any H, W >= 1.

  Bin i along an axis of length n covers [floor(i n / out), ceil((i + 1) n / out)): the bins of
  PyTorch's adaptive average pooling, an exact tiling when n is a multiple of `output_size` and
  overlapping bins otherwise.
  """

  def pool_axis(values: jax.Array, axis: int) -> jax.Array:
    length = values.shape[axis]
    bins = []
    for i in range(output_size):
      start = (i * length) // output_size
      stop = -((-(i + 1) * length) // output_size)  # ceil((i + 1) * length / output_size)
      window = jax.lax.slice_in_dim(values, start, stop, axis=axis)
      bins.append(jnp.mean(window, axis=axis, keepdims=True))
    return jnp.concatenate(bins, axis=axis)

  return pool_axis(pool_axis(x, 1), 2)


# The kernel-gradient pieces' budget on CPU backends (`conv_kernel_grad_mb` < 0): the best of
# 4-128 MB for the paper tower at 1024 px, B=32 on 2 cores (README, 2026-12-07).
CPU_KERNEL_GRAD_MB = 16.0


class SquareConv(nn.Module):
  """A bias-free k x k conv with PyTorch-style symmetric padding (k // 2 on each side): the
  parameter, its shape and its initialisation of `nn.Conv` ("kernel" [k, k, in, out]).

  On an output map of at most `matmul_max_positions` positions it runs as the input's patches times
  the kernel, one matmul of the same sums: XLA:CPU's convolution is slow on tiny maps (forward and
  backward of a 3 x 3, 512 -> 512 conv on a 2 x 2 map, batch 8: 141 ms, as a matmul 7 ms), which
  the last stage of the paper's tower at 512 px is. 0 turns it off.

  With `kernel_grad_budget_bytes` > 0 its kernel gradient is summed over pieces of the batch of
  at most that many bytes of activation and output gradient per device
  (`conv_lowering.conv_pieced_kernel_grad`: the same sums in another order, faster on XLA:CPU's
  high-resolution stages); `batch_shards` is how many devices the batch is split over.
  """

  features: int
  kernel_size: int
  stride: int = 1
  matmul_max_positions: int = 4
  kernel_grad_budget_bytes: int = 0
  batch_shards: int = 1
  kernel_init: nn.initializers.Initializer = conv_kernel_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.stride
    kernel = self.param(
      "kernel", self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype
    )
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    padding = [(k // 2, k // 2)] * 2
    numbers = ("NHWC", "HWIO", "NHWC")
    out_h, out_w = ((n + 2 * (k // 2) - k) // s + 1 for n in x.shape[1:3])
    if out_h * out_w <= self.matmul_max_positions:
      patches = jax.lax.conv_general_dilated_patches(
        x, (k, k), (s, s), padding, dimension_numbers=numbers
      )  # [B, h, w, in * k * k], features ordered (in, kh, kw)
      return patches @ jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, self.features)
    bytes_per_image = (x[0].size + out_h * out_w * self.features) * x.dtype.itemsize
    pieces = conv_lowering.kernel_grad_pieces(
      x.shape[0], self.batch_shards, bytes_per_image, self.kernel_grad_budget_bytes
    )
    if pieces > 1:
      return conv_lowering.conv_pieced_kernel_grad(x, kernel, s, k // 2, pieces)
    return conv_lowering.conv(x, kernel, s, k // 2)


class BasicBlock(nn.Module):
  """ResNet BasicBlock: two 3x3 convs with BatchNorm, identity or 1x1-projection shortcut."""

  features: int
  stride: int = 1
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_matmul_max_positions: int = 4  # `SquareConv.matmul_max_positions`
  kernel_grad_budget_bytes: int = 0  # `SquareConv.kernel_grad_budget_bytes`
  batch_shards: int = 1

  def _conv(self, kernel: int, stride: int, name: str) -> SquareConv:
    """A bias-free conv with PyTorch-style symmetric padding (kernel // 2 on each side)."""
    return SquareConv(
      self.features,
      kernel,
      stride=stride,
      matmul_max_positions=self.conv_matmul_max_positions,
      kernel_grad_budget_bytes=self.kernel_grad_budget_bytes,
      batch_shards=self.batch_shards,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )

  def _norm(self, train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = self._conv(1, self.stride, "shortcut_conv")(x)
      shortcut = self._norm(train, "shortcut_bn")(shortcut)
    y = self._conv(3, self.stride, "conv1")(x)
    y = nn.relu(self._norm(train, "bn1")(y))
    y = self._conv(3, 1, "conv2")(y)
    y = self._norm(train, "bn2")(y)
    return nn.relu(y + shortcut)


def torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default bias initialisation for a layer with `fan_in` inputs: U(-1/sqrt, 1/sqrt)."""
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# PyTorch's default weight initialisation (Kaiming uniform, a = sqrt(5)): U(-1/sqrt(fan_in), ...).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class SpatialSoftmaxAttention(nn.Module):
  """The original JoImTeRNet soft attention: returns `(x + scale * x * m, m)`.

  Each of `num_heads` heads is a 1x1 projection of all C channels to one logit per position (the
  original writes it as a Conv3d of kernel and stride (C, 1, 1) over the channel axis), with a
  bias and a LeakyReLU (slope 0.01); a softmax over the H * W positions turns each head into a
  spatial distribution, and the map m is the sum of the heads' distributions (so m sums to
  `num_heads` over space). Every channel is re-weighted by the same map, scaled by a learnable
  scalar. Initialised as the original: PyTorch's default uniform weights and bias for the
  projection, and the scale drawn from U[0, 1) (`scale_init=None`) or set to `scale_init`
  (0.0 makes the block the identity at initialisation).
  """

  num_heads: int = 16
  scale_init: float | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    del train  # no BatchNorm or dropout in this block
    batch, height, width, channels = x.shape
    if self.scale_init is None:
      scale_init = nn.initializers.uniform(1.0)
    else:
      scale_init = nn.initializers.constant(self.scale_init)
    scale = self.param("scale", scale_init, (1,), self.param_dtype)
    logits = nn.Dense(
      self.num_heads,
      kernel_init=torch_default_kernel_init,
      bias_init=torch_default_bias_init(channels),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="heads",
    )(x)
    logits = nn.leaky_relu(logits.astype(jnp.float32), negative_slope=0.01)
    per_head = jax.nn.softmax(logits.reshape(batch, height * width, self.num_heads), axis=1)
    attention_map = jnp.sum(per_head, axis=-1).reshape(batch, height, width)  # float32
    importance = x * attention_map[..., None].astype(x.dtype)
    out = x + importance * scale.astype(x.dtype)
    return out, attention_map


class SigmoidGateAttention(nn.Module):
  """Soft spatial attention, residual-attention style: returns `(x * (1 + m), m)`.

  The mask branch max-pools by 2 (a wider receptive field than the trunk's), applies a 3x3 conv
  with BatchNorm and ReLU, then a 1x1 conv to one channel; the logits are resized bilinearly back
  to the trunk's grid and squashed by a sigmoid, so m lies in [0, 1] and `1 + m` can emphasise
  trunk features but never erase them. Not the original's block (`SpatialSoftmaxAttention`); the
  built-in default config keeps it.
  """

  hidden_features: int
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    batch, height, width, _ = x.shape
    mask = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    mask = nn.Conv(
      self.hidden_features,
      (3, 3),
      padding=((1, 1), (1, 1)),
      use_bias=False,
      kernel_init=conv_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="conv",
    )(mask)
    mask = nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="bn",
    )(mask)
    mask = nn.relu(mask)
    logits = nn.Conv(1, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="logits")(mask)
    logits = jax.image.resize(logits.astype(jnp.float32), (batch, height, width, 1), "bilinear")
    attention_map = nn.sigmoid(logits)[..., 0]  # [B, H, W], float32
    out = x * (1.0 + attention_map[..., None]).astype(x.dtype)
    return out, attention_map


# The soft-attention blocks by config name (`model.image.attention`).
ATTENTION_BLOCKS = ("original", "sigmoid_gate")
# How the global image vector is made (`model.image.global_pooling`).
GLOBAL_POOLINGS = ("paper", "region_mean")
# Initialisation of the region and global heads (`model.image.weight_init`): Flax's LeCun normal
# ("lecun"), or the release's ("original": Kaiming normal on fan-out for the region conv, PyTorch's
# default uniform +-1/sqrt(fan_in) for the global Linear and for any bias).
IMAGE_INITS = ("lecun", "original")


def _identity_init(key, shape, dtype=jnp.float32):
  """A square kernel initialised to the identity (the anatomy head starts as plain pooling)."""
  del key
  return jnp.eye(*shape, dtype=dtype)


class JoImTeRNetResNet(nn.Module):
  """The JoImTeRNet ResNet: region features on an intermediate grid plus a global embedding.

  Attributes:
      embed_dim: dimension D of the region features and of the global embedding.
      widths: channels of each stage (paper: 16, 32, 64, 128, 256, 512).
      stem_width: channels of the 7x7 stride-4 stem (None: `widths[0]`; paper: 8).
      blocks_per_stage: BasicBlocks per stage (paper: 2).
      first_stage_stride: stride of the first stage's first block (paper: 2); the first block of
          every later stage always has stride 2.
      attention_stages: stage indices followed by soft attention; negative indices count from
          the end (paper: -3 and -2, the 128 and 256 stages).
      region_stage: stage index whose (attended) output gives the region grid (paper: -2).
      global_pool_size: side of the adaptive pooling before the global Dense (paper: 2).
      global_pooling: "paper" (the global head above) or "region_mean" (the global vector is the
          mean of the region vectors; the stages after the region stage are not built).
      attention: soft-attention block, one of `ATTENTION_BLOCKS`: "original" (the release's
          `SpatialSoftmaxAttention`, paper) or "sigmoid_gate" (`SigmoidGateAttention`).
      attention_heads: heads of the "original" block (paper: 16).
      attention_scale_init: initial scale of the "original" block (None: U[0, 1), as the
          original's `torch.rand(1)`).
      attention_hidden: channels of the sigmoid gate's mask branch (None: stage width // 4, >= 8).
      region_head_bias: whether the region head's 1x1 conv has a bias (paper: False).
      weight_init: initialisation of the region and global heads, one of `IMAGE_INITS` (paper:
          "original"); the stem and blocks always use Kaiming normal on fan-out, as the release.
      bn_momentum: BatchNorm running-average momentum (0.9 equals PyTorch's momentum=0.1).
      dtype: compute dtype (e.g. bfloat16); parameters stay in `param_dtype`.
      param_dtype: parameter dtype (float32).
      remat: recompute each BasicBlock in the backward pass instead of storing activations.
      conv_matmul_max_positions: the blocks' convs on output maps of at most this many positions
          run as one matmul (`SquareConv`; the same sums, faster on XLA:CPU); 0: never.
      conv_kernel_grad_mb: the stem's and blocks' kernel gradients summed over pieces of the
          batch of at most this many MB (10^6 bytes) of activation and output gradient per
          device (`SquareConv`; the same sums in another order, faster on XLA:CPU); 0: never;
          negative: `CPU_KERNEL_GRAD_MB` on CPU backends, never on others.
      batch_shards: how many devices the batch is split over (the pieces take the same images
          from every device's share).
      anatomy_head: also embed anatomical boxes: the region grid pooled inside each box
          (`jimte.anatomy.pooling`), then a Dense initialised to the identity (so that a stage-2 run
          starts from the stage-1 region features), for the RRA-VL objective (docs/alc_itr.md).
  """

  embed_dim: int
  widths: Sequence[int] = (16, 32, 64, 128, 256, 512)
  stem_width: int | None = None
  blocks_per_stage: int = 2
  first_stage_stride: int = 2
  attention_stages: Sequence[int] = (-3, -2)
  region_stage: int = -2
  global_pool_size: int = 2
  global_pooling: str = "paper"
  attention: str = "original"
  attention_heads: int = 16
  attention_scale_init: float | None = None
  attention_hidden: int | None = None
  region_head_bias: bool = False
  weight_init: str = "lecun"
  bn_momentum: float = 0.9
  conv_kernel_grad_mb: float = 0.0
  batch_shards: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  conv_matmul_max_positions: int = 4
  anatomy_head: bool = False

  def _kernel_grad_budget_bytes(self) -> int:
    megabytes = self.conv_kernel_grad_mb
    if megabytes < 0:  # auto: the backend is the same on every process, so is the choice
      megabytes = CPU_KERNEL_GRAD_MB if jax.default_backend() == "cpu" else 0.0
    return int(megabytes * 1e6)

  def _stage_index(self, index: int) -> int:
    """Maps a possibly negative stage index to 0..len(widths)-1, or raises."""
    num_stages = len(self.widths)
    if not -num_stages <= index < num_stages:
      raise ValueError(f"stage index {index} out of range for {num_stages} stages")
    return index % num_stages

  def _head_inits(
    self, fan_in: int, original_kernel_init: nn.initializers.Initializer
  ) -> dict[str, nn.initializers.Initializer]:
    """Initialisers of a head with `fan_in` inputs: Flax's defaults ("lecun"), or the release's
    kernel init with PyTorch's default bias ("original")."""
    if self.weight_init != "original":
      return {}
    return dict(kernel_init=original_kernel_init, bias_init=torch_default_bias_init(fan_in))

  def _attention_block(self, width: int, name: str) -> nn.Module:
    """The configured soft-attention block for a stage of `width` channels."""
    if self.attention == "original":
      return SpatialSoftmaxAttention(
        self.attention_heads,
        scale_init=self.attention_scale_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
      )
    return SigmoidGateAttention(
      self.attention_hidden or max(width // 4, 8),
      bn_momentum=self.bn_momentum,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool, boxes: jax.Array | None = None) -> ImageOutput:
    """Encodes images [B, S, S, 1] (float, in [-1, 1]) into an `ImageOutput`; `boxes` [B, K, 4]
    (normalised [y0, x0, y1, x1]) are the anatomical boxes of towers with `anatomy_head`."""
    if images.ndim != 4 or images.shape[-1] != 1:
      raise ValueError(f"expected images [B, S, S, 1], got {images.shape}")
    if self.first_stage_stride not in (1, 2):
      raise ValueError(f"first_stage_stride must be 1 or 2, got {self.first_stage_stride}")
    if self.blocks_per_stage < 1:
      raise ValueError(f"blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
    if self.attention not in ATTENTION_BLOCKS:
      raise ValueError(f"attention must be one of {ATTENTION_BLOCKS}, got {self.attention!r}")
    if self.weight_init not in IMAGE_INITS:
      raise ValueError(f"weight_init must be one of {IMAGE_INITS}, got {self.weight_init!r}")
    if self.global_pooling not in GLOBAL_POOLINGS:
      raise ValueError(
        f"global_pooling must be one of {GLOBAL_POOLINGS}, got {self.global_pooling!r}"
      )
    attention_stages = {self._stage_index(i) for i in self.attention_stages}
    region_stage = self._stage_index(self.region_stage)

    x = images.astype(self.dtype)
    x = SquareConv(
      self.stem_width or self.widths[0],
      7,
      stride=4,
      matmul_max_positions=0,
      kernel_grad_budget_bytes=self._kernel_grad_budget_bytes(),
      batch_shards=self.batch_shards,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="stem_conv",
    )(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="stem_bn",
    )(x)
    x = nn.relu(x)

    # For lifted modules static_argnums counts `self` as argument 0, so `train` is argument 2.
    block_cls = nn.remat(BasicBlock, static_argnums=(2,)) if self.remat else BasicBlock
    attention_maps = {}
    regions = None
    last_stage = region_stage if self.global_pooling == "region_mean" else len(self.widths) - 1
    for stage, width in enumerate(self.widths[: last_stage + 1]):
      for block in range(self.blocks_per_stage):
        stride = 1
        if block == 0:
          stride = self.first_stage_stride if stage == 0 else 2
        x = block_cls(
          width,
          stride=stride,
          bn_momentum=self.bn_momentum,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          conv_matmul_max_positions=self.conv_matmul_max_positions,
          kernel_grad_budget_bytes=self._kernel_grad_budget_bytes(),
          batch_shards=self.batch_shards,
          name=f"stage{stage}_block{block}",
        )(x, train)
      if stage in attention_stages:
        x, attention_map = self._attention_block(width, f"stage{stage}_attention")(x, train)
        attention_maps[f"stage{stage}"] = attention_map
      if stage == region_stage:
        regions = nn.Conv(
          self.embed_dim,
          (1, 1),
          use_bias=self.region_head_bias,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name="region_head",
          **self._head_inits(x.shape[-1], conv_kernel_init),
        )(x)

    if self.global_pooling == "region_mean":
      global_emb = jnp.mean(regions.astype(jnp.float32), axis=(1, 2))
    else:
      pooled = adaptive_avg_pool(x, self.global_pool_size)
      pooled = pooled.reshape(pooled.shape[0], -1)
      global_emb = nn.Dense(
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="global_head",
        **self._head_inits(pooled.shape[-1], torch_default_kernel_init),
      )(pooled)
    anatomy = None
    if self.anatomy_head:
      if boxes is None:
        boxes = jnp.asarray(default_atlas())
      pooled_boxes = pool_boxes(regions, boxes)
      anatomy = nn.Dense(
        self.embed_dim,
        kernel_init=_identity_init,
        bias_init=nn.initializers.zeros,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="anatomy_head",
      )(pooled_boxes).astype(jnp.float32)
    elif boxes is not None:
      raise ValueError("boxes given to an image tower without anatomy_head")
    return ImageOutput(
      global_emb=global_emb.astype(jnp.float32),
      regions=regions.astype(jnp.float32),
      attention_maps=attention_maps,
      anatomy=anatomy,
    )
