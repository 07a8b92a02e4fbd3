"""The drawing surface of a phantom: posed pixel grids and the small numpy helpers drawing uses.

`Canvas` maps the pixels of one posed image to canonical coordinates (see
`data_pipeline.phantoms.geometry`) window by window; the helpers are soft steps, distances to
polylines, Bezier curves and smooth noise, all vectorised and cached where it pays.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from data_pipeline.phantoms.geometry import ChestGeometry, Pose


@functools.lru_cache(maxsize=8)
def pixel_centres(size: int) -> np.ndarray:
  """Normalised pixel-centre coordinates `(i + 0.5) / size`."""
  return ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)


@functools.lru_cache(maxsize=16)
def smooth_taps(size: int, grid: int, taps: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Gaussian interpolation from `grid` cells to `size` pixels along one axis, as sparse taps.

  Returns `index` int [taps, size] (the nearest cells) and `weight` float32 [taps, size],
  scaled so that interpolating unit white noise along both axes gives unit variance.
  """
  x = (np.arange(size) + 0.5) / size * grid - 0.5  # pixel centres in cell units
  first = np.floor(x).astype(np.int64) - (taps // 2 - 1)
  index = first[None, :] + np.arange(taps)[:, None]
  weight = np.exp(-0.5 * np.square((x[None, :] - index) / 0.75))
  weight /= np.sqrt(np.square(weight).sum(axis=0, keepdims=True))
  return np.clip(index, 0, grid - 1), weight.astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
  """Unit-variance smooth Gaussian noise with features about `size / grid` pixels across.

  White noise on a `grid x grid` lattice, interpolated with a separable truncated Gaussian:
  a few gathers and multiply-adds, no BLAS call (which is slow when cores are contended).
  """
  cells = rng.standard_normal((grid, grid), dtype=np.float32)
  index, weight = smooth_taps(size, grid)
  rows = weight[0][:, None] * cells[index[0]]  # [size, grid]
  for k in range(1, len(index)):
    rows += weight[k][:, None] * cells[index[k]]
  out = rows[:, index[0]] * weight[0][None, :]  # [size, size]
  for k in range(1, len(index)):
    out += rows[:, index[k]] * weight[k][None, :]
  return out


LUNG_EDGE = 0.02  # width of the soft edge of the lung fields, canonical units


def clip01(x: np.ndarray) -> np.ndarray:
  """Clip to [0, 1] in place (cheaper than `np.clip` on the many small calls of a phantom)."""
  np.maximum(x, 0.0, out=x)
  return np.minimum(x, 1.0, out=x)


def ramp(x, width: float) -> np.ndarray:
  """Soft step: 0 for x <= -width/2, 1 for x >= width/2, linear between (a new array).

  A negative `width` gives the falling step of `-x` without computing `-x`.
  """
  out = x * (1.0 / width)
  out += 0.5
  return clip01(out)


def polyline_distance(
  v: np.ndarray, u: np.ndarray, points: Sequence[tuple[float, float]]
) -> np.ndarray:
  """Distance from every `(v, u)` to a polyline through canonical `points`."""
  best = None
  for (v0, u0), (v1, u1) in zip(points[:-1], points[1:], strict=True):
    dv, du = v1 - v0, u1 - u0
    length2 = max(dv * dv + du * du, 1e-12)
    t = clip01(((v - v0) * dv + (u - u0) * du) * (1.0 / length2))
    dist2 = np.square(v - v0 - t * dv) + np.square(u - u0 - t * du)
    best = dist2 if best is None else np.minimum(best, dist2, out=best)
  return np.sqrt(best)


def bezier(p0, p1, p2, p3, n: int = 12) -> list[tuple[float, float]]:
  """Points of a cubic Bezier curve (for catheters and pacemaker leads)."""
  t = np.linspace(0.0, 1.0, n)[:, None]
  pts = (
    ((1 - t) ** 3) * np.array(p0)
    + 3 * ((1 - t) ** 2) * t * np.array(p1)
    + 3 * (1 - t) * (t**2) * np.array(p2)
    + (t**3) * np.array(p3)
  )
  return [tuple(p) for p in pts]


class Canvas:
  """One posed image grid: canonical coordinates of its pixels and the layers being drawn.

  Coordinates are affine in the pixel indices, so they are kept as two 1-D vectors and only
  expanded for the window being drawn (`coords`).
  """

  def __init__(self, size: int, geometry: ChestGeometry, pose: Pose):
    self.size = size
    self.geometry = geometry
    self.pose = pose
    centres = pixel_centres(size)
    self.cos, self.sin = math.cos(pose.angle), math.sin(pose.angle)
    inv = 1.0 / pose.scale
    self.dy = ((centres - 0.5 - pose.shift_y) * inv).astype(np.float32)
    self.dx = ((centres - 0.5 - pose.shift_x) * inv).astype(np.float32)
    self.pixel = inv / size  # canonical length of one pixel
    self.findings = np.zeros((size, size), np.float32)
    self.vessels: np.ndarray | None = None  # lung vessel map (full-resolution canvas only)

  def coords(self, window=None) -> tuple[np.ndarray, np.ndarray]:
    """Canonical `(v, u)` arrays of the pixels of `window` (the whole image if None)."""
    dy = self.dy[:, None] if window is None else self.dy[window[0]][:, None]
    dx = self.dx[None, :] if window is None else self.dx[window[1]][None, :]
    v = (0.5 + self.cos * dy) + self.sin * dx
    u = (0.5 - self.sin * dy) + self.cos * dx
    return v, u

  def window(self, box, margin: float = 0.0) -> tuple[slice, slice] | None:
    """Pixel slices covering a canonical box `[v0, u0, v1, u1]` (grown by `margin`) after
    pose."""
    v0, u0, v1, u1 = box
    y0, x0, y1, x1 = self.pose.box_to_image(
      (v0 - margin, u0 - margin, v1 + margin, u1 + margin), clip=False
    )
    s = self.size
    r0, r1 = max(int(math.floor(y0 * s)) - 1, 0), min(int(math.ceil(y1 * s)) + 1, s)
    c0, c1 = max(int(math.floor(x0 * s)) - 1, 0), min(int(math.ceil(x1 * s)) + 1, s)
    if r1 <= r0 or c1 <= c0:
      return None
    return slice(r0, r1), slice(c0, c1)

  def lung_mask(self, side: str, window) -> np.ndarray:
    """Soft mask (0..1) of the lung field of `side` inside a pixel window."""
    v, u = self.coords(window)
    return ramp(-self.geometry.lung_signed_distance(v, u, side), LUNG_EDGE)

  def line_width(self, width: float) -> float:
    """A canonical line width, never thinner than ~0.8 pixel so thin devices survive small
    images."""
    return max(width, 0.8 * self.pixel)

  def stroke(self, points: Sequence[tuple[float, float]], width: float):
    """A line of Gaussian profile (peak 1) along a canonical polyline: `(window, values)` or None.

    Each segment is evaluated only in its own small window and combined by maximum, so a long
    catheter costs little more than its own pixels.
    """
    width = self.line_width(width)
    reach = 2.5 * width
    vs, us = [p[0] for p in points], [p[1] for p in points]
    union = self.window((min(vs), min(us), max(vs), max(us)), margin=reach)
    if union is None:
      return None
    line = np.zeros((union[0].stop - union[0].start, union[1].stop - union[1].start), np.float32)
    for p, q in zip(points[:-1], points[1:], strict=True):
      window = self.window(
        (min(p[0], q[0]), min(p[1], q[1]), max(p[0], q[0]), max(p[1], q[1])), margin=reach
      )
      if window is None:
        continue
      v, u = self.coords(window)
      values = np.exp(np.square(polyline_distance(v, u, [p, q])) * (-1.0 / width**2))
      local = (
        slice(window[0].start - union[0].start, window[0].stop - union[0].start),
        slice(window[1].start - union[1].start, window[1].stop - union[1].start),
      )
      np.maximum(line[local], values, out=line[local])
    return union, line

  def pixel_box(self, window, contribution: np.ndarray, fraction: float):
    """Normalised image box of the pixels where `contribution` exceeds `fraction` of its
    peak."""
    magnitude = np.abs(contribution)
    peak = float(magnitude.max()) if magnitude.size else 0.0
    if peak <= 0.0:
      return None
    mask = magnitude > fraction * peak
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, c0 = window[0].start, window[1].start
    s = float(self.size)
    return (
      (r0 + rows[0]) / s,
      (c0 + cols[0]) / s,
      (r0 + rows[-1] + 1) / s,
      (c0 + cols[-1] + 1) / s,
    )
