"""Maps on the model's region grid, brought to image pixels: one bilinear resampler shared by the
grounding metrics, the figures and the inference API (so all place a grid cell at the same pixels).
"""

from __future__ import annotations

import numpy as np


def bilinear(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Samples [..., h, w] at fractional (rows x cols) grid positions, separably (positions must lie
  in [0, h - 1] x [0, w - 1])."""
  r0 = np.floor(rows).astype(int)
  c0 = np.floor(cols).astype(int)
  r1 = np.minimum(r0 + 1, grid.shape[-2] - 1)
  c1 = np.minimum(c0 + 1, grid.shape[-1] - 1)
  fr = (rows - r0)[:, None]
  fc = (cols - c0)[None, :]
  top = grid[..., r0, :][..., c0] * (1 - fc) + grid[..., r0, :][..., c1] * fc
  bottom = grid[..., r1, :][..., c0] * (1 - fc) + grid[..., r1, :][..., c1] * fc
  return top * (1 - fr) + bottom * fr


def grid_to_pixels(
  grid: np.ndarray, height: int, width: int, *, top: float = 0, left: float = 0, side=None
) -> np.ndarray:
  """[..., h, w] values at the cell centres of a grid laid over the square of side `side` at
  (top, left) of a [height, width] image -> [..., height, width] at the pixel centres (bilinear;
  beyond the outer cell centres, the nearest edge value). By default the grid spans the image."""
  h, w = grid.shape[-2:]
  side_rows = height if side is None else side
  side_cols = width if side is None else side
  rows = (np.arange(height) + 0.5 - top) * (h / side_rows) - 0.5
  cols = (np.arange(width) + 0.5 - left) * (w / side_cols) - 0.5
  return bilinear(grid, np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1))


def box_mask(boxes, height: int, width: int) -> np.ndarray:
  """bool [height, width]: the pixels whose centres lie inside any of `boxes`, each a normalised
  [y0, x0, y1, x1] of the image (y down, x right, in [0, 1])."""
  rows = (np.arange(height) + 0.5) / height
  cols = (np.arange(width) + 0.5) / width
  mask = np.zeros((height, width), bool)
  for y0, x0, y1, x1 in boxes:
    inside_rows = (rows >= y0) & (rows < y1)
    inside_cols = (cols >= x0) & (cols < x1)
    mask |= inside_rows[:, None] & inside_cols[None, :]
  return mask
