"""Rendering: the radiograph of a plan, with the image box of each of its findings.

`render_plan` composes the normal chest (half resolution for large images), exposure, vessels,
findings and quantum noise into a uint8 image; noise has its own stream, so changing the findings
of a plan changes only the pixels they touch.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_pipeline.names import region_id
from data_pipeline.phantoms.canvas import Canvas, clip01, smooth_noise, smooth_taps
from data_pipeline.phantoms.chest import draw_anatomy, vessel_map
from data_pipeline.phantoms.plans import ExamplePlan
from data_pipeline.phantoms.renderers import RENDERERS
from data_pipeline.phantoms.streams import stream_rng


@dataclasses.dataclass(frozen=True)
class Rendering:
  """A rendered image with the image-space box of each finding of the plan (same order)."""

  image: np.ndarray  # uint8 [S, S, 1]
  finding_boxes: tuple[tuple[float, float, float, float], ...]
  region_boxes: np.ndarray  # float32 [29, 4]


def _upsample2(image: np.ndarray) -> np.ndarray:
  """Bilinear 2x upsampling aligned on pixel centres (each output is 3/4 near + 1/4 far input)."""
  h, w = image.shape
  step = image[:, 1:] - image[:, :-1]
  step *= 0.25
  cols = np.empty((h, w, 2), image.dtype)
  cols[:, :, 0] = image
  cols[:, :, 1] = image
  cols[:, 1:, 0] -= step
  cols[:, :-1, 1] += step
  cols = cols.reshape(h, 2 * w)
  step = cols[1:] - cols[:-1]
  step *= 0.25
  out = np.empty((h, 2, 2 * w), image.dtype)
  out[:, 0] = cols
  out[:, 1] = cols
  out[1:, 0] -= step
  out[:-1, 1] += step
  return out.reshape(2 * h, 2 * w)


def _smooth_curve(rng: np.random.Generator, size: int, knots: int) -> np.ndarray:
  """A smooth random 1-D profile of unit variance over `size` samples (`knots` control
  points)."""
  index, weight = smooth_taps(size, knots)
  values = rng.standard_normal(knots).astype(np.float32)
  return sum(weight[k] * values[index[k]] for k in range(len(index)))


_UNIFORM_BYTE_STD = math.sqrt((256.0**2 - 1.0) / 12.0)  # std of a uniform signed byte


def render_plan(plan: ExamplePlan, image_size: int = 256) -> Rendering:
  """Draw the radiograph of `plan` at `image_size` pixels and measure its findings' boxes.

  The smooth anatomy, the exposure window, gamma and shading are computed at half resolution
  (for images of 160 px and more) and upsampled; vessels, findings, devices and noise are drawn
  at full resolution on top. Noise comes from the example's own stream, so changing
  `plan.findings` changes only the pixels the findings touch.
  """
  geometry = plan.effective_geometry()
  style = plan.style
  canvas = Canvas(image_size, geometry, plan.pose)
  half = image_size >= 160 and image_size % 2 == 0
  coarse = Canvas(image_size // 2, geometry, plan.pose) if half else canvas
  noise_rng = stream_rng(plan.seed, plan.split, plan.index, "noise")
  attenuation, air, vessel_weight = draw_anatomy(coarse, style)
  # Lung mottling (low-frequency texture), then window and display gamma, then uneven exposure.
  mottle = smooth_noise(noise_rng, coarse.size, max(4, min(32, coarse.size // 4)))
  attenuation += (0.18 * style.markings) * mottle * air
  scale = 1.0 / (style.window_high - style.window_low)
  intensity = clip01((attenuation - style.window_low) * scale)
  intensity = np.power(intensity, np.float32(style.gamma), out=intensity)
  shading = (
    style.shading
    * (
      _smooth_curve(noise_rng, coarse.size, 3)[:, None]
      + _smooth_curve(noise_rng, coarse.size, 3)[None, :]
    )
    * (1.0 / math.sqrt(2.0))
  )
  intensity += shading
  if half:
    intensity, vessel_weight = (
      _upsample2(intensity),
      vessel_weight.repeat(2, axis=0).repeat(2, axis=1),
    )
  # Full-resolution detail, added in attenuation units scaled by the window.
  canvas.vessels = vessel_map(canvas, noise_rng)
  boxes = []
  for spec in plan.findings:
    box = RENDERERS[spec.kind](canvas, spec, style)
    if box is None:  # entirely outside the field of view: fall back to the region's box
      box = tuple(float(b) for b in geometry.region_boxes(plan.pose)[region_id(spec.region)])
    boxes.append(tuple(min(max(float(b), 0.0), 1.0) for b in box))
  detail = canvas.vessels * vessel_weight
  detail *= style.markings
  detail += canvas.findings
  detail *= scale * 255.0
  # Quantum noise: uniform signed bytes scaled to the drawn standard deviation.
  noise = np.frombuffer(noise_rng.bytes(image_size * image_size), np.int8).reshape(
    image_size, image_size
  )
  detail += noise * np.float32(style.noise_std * 255.0 / _UNIFORM_BYTE_STD)
  intensity *= 255.0
  intensity += detail
  intensity += 0.5  # round to nearest in the conversion below
  np.maximum(intensity, 0.0, out=intensity)
  np.minimum(intensity, 255.0, out=intensity)
  return Rendering(
    image=intensity.astype(np.uint8)[..., None],
    finding_boxes=tuple(boxes),
    region_boxes=geometry.region_boxes(plan.pose),
  )
