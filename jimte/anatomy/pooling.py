"""Region grid -> one vector per anatomical box: the masked average of the grid cells, each cell
weighted by the fraction of its area inside the box (exact for boxes on cell borders, and a box
smaller than a cell still gets the cell(s) it lies in)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _overlap_1d(low: jax.Array, high: jax.Array, cells: int) -> jax.Array:
  """[..., cells]: length of [low, high] (in [0, 1]) inside each of `cells` equal intervals,
  as a fraction of the interval."""
  edges = jnp.arange(cells + 1, dtype=jnp.float32) / cells
  lo = jnp.maximum(low[..., None], edges[:-1])
  hi = jnp.minimum(high[..., None], edges[1:])
  return jnp.clip(hi - lo, 0.0, None) * cells


def box_cell_weights(boxes: jax.Array, height: int, width: int) -> jax.Array:
  """Boxes [..., 4] normalised [y0, x0, y1, x1] -> weights [..., height, width] summing to one:
  each cell's area fraction inside the box. A box of zero area gets the cell holding its corner."""
  boxes = jnp.clip(boxes.astype(jnp.float32), 0.0, 1.0)
  y0, x0, y1, x1 = (boxes[..., i] for i in range(4))
  wy = _overlap_1d(y0, jnp.maximum(y1, y0), height)
  wx = _overlap_1d(x0, jnp.maximum(x1, x0), width)
  weights = wy[..., :, None] * wx[..., None, :]
  total = weights.sum((-2, -1), keepdims=True)
  corner = (
    jax.nn.one_hot(jnp.minimum((y0 * height).astype(jnp.int32), height - 1), height)[..., :, None]
    * jax.nn.one_hot(jnp.minimum((x0 * width).astype(jnp.int32), width - 1), width)[..., None, :]
  )
  return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), corner)


def pool_boxes(grid: jax.Array, boxes: jax.Array) -> jax.Array:
  """Grid [B, H, W, D] and boxes [B, K, 4] (or [K, 4], the same for every image) -> [B, K, D]."""
  _, h, w, _ = grid.shape
  weights = box_cell_weights(boxes, h, w)
  if weights.ndim == 3:
    return jnp.einsum("khw,bhwd->bkd", weights.astype(grid.dtype), grid)
  return jnp.einsum("bkhw,bhwd->bkd", weights.astype(grid.dtype), grid)
