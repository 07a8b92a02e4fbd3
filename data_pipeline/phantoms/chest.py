"""The normal chest of a phantom: attenuation of its anatomy and its pulmonary vessel markings.

`draw_anatomy` draws body, lungs, heart, hila, airways, spine, ribs, clavicles and the gastric
bubble; `vessel_map` warps one of a few cached vessel trees onto the image's anatomy and pose.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from data_pipeline.phantoms.canvas import (
  LUNG_EDGE,
  Canvas,
  clip01,
  pixel_centres,
  polyline_distance,
  ramp,
)
from data_pipeline.phantoms.geometry import SIDES
from data_pipeline.phantoms.plans import ImageStyle


def draw_anatomy(canvas: Canvas, style: ImageStyle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Attenuation map of the normal chest, the lung air map, and where vessel markings show.

  Bright means dense: soft tissue everywhere inside the body, minus air in the lungs and trachea,
  plus bone (ribs, clavicles, spine). The heart and aortic knob displace lung, so their borders
  show as the edge of the bright mediastinum. Compact structures are drawn only inside their
  own pixel windows; this function is most of the cost of a phantom.
  """
  g = canvas.geometry
  v, u = canvas.coords()
  mid = g.midline_u
  ad = np.abs(u - mid)  # distance from the midline
  # Body: torso below sloping shoulders, plus the neck; thicker (brighter) in the middle.
  shoulder = np.maximum(ad - g.neck_halfwidth, 0.0)
  shoulder *= shoulder
  shoulder *= 0.35
  shoulder += g.shoulder_v - 0.06
  torso = np.maximum(ad - g.body_halfwidth, shoulder - v)
  body = ramp(np.minimum(torso, ad - g.neck_halfwidth), -0.03)
  thickness = ad * (1.0 / (g.body_halfwidth + 0.02))
  thickness *= thickness
  thickness = np.sqrt(clip01(1.0 - thickness))
  att = body * (style.soft_tissue * 0.15 + (style.soft_tissue * 0.85) * thickness)
  # Lungs: air removes attenuation, except where the heart and aortic knob displace the lung.
  lungs = np.zeros_like(v)
  regions = g.canonical_region_boxes()
  for side in SIDES:  # each lung only inside its own window
    window = canvas.window(regions[f"{side} lung"], margin=0.03)
    if window is not None:
      wv, wu = v[window], u[window]
      lungs[window] += ramp(g.lung_signed_distance(wv, wu, side), -LUNG_EDGE)
  air = lungs.copy()
  hv_, hu_ = g.heart_center
  ext_v, ext_u = g.heart_extent()
  kv, ku, kr = g.aortic_knob
  for box, occupancy in (
    ((hv_ - ext_v, hu_ - ext_u, hv_ + ext_v, hu_ + ext_u), lambda wv, wu: g.heart_radius2(wv, wu)),
    (
      (kv - kr, ku - kr, kv + kr, ku + kr),
      lambda wv, wu: (np.square(wv - kv) + np.square(wu - ku)) * (1.0 / (kr * kr)),
    ),
  ):
    window = canvas.window(box, margin=0.01)
    if window is not None:
      organ = clip01((1.0 - occupancy(*canvas.coords(window))) * 4.0)
      air[window] *= 1.0 - organ
      att[window] += 0.03 * organ
  # Air is thinner towards the bases and the chest wall, where more soft tissue overlaps.
  depth = clip01((v - g.apex_v) * (1.0 / g.lung_height))
  depth *= depth
  air *= 1.0 - 0.25 * depth
  air *= 0.7 + 0.3 * thickness
  att -= style.lung_air * air
  # Where vessel markings show: in aerated lung, fading so the outer third is nearly clear.
  hv, hu = g.hilum("left")
  hilum_r = np.square(v - hv)
  hilum_r += np.square(ad - (hu - mid))
  hilum_r = np.sqrt(hilum_r)
  hilum_r *= -2.5
  hilum_r += 1.25
  vessel_weight = air * np.minimum(np.maximum(hilum_r, 0.25, out=hilum_r), 1.0, out=hilum_r)
  # Hila: pulmonary arteries, brighter blobs at the lung roots.
  for side in SIDES:
    sv, su = g.hilum(side)
    window = canvas.window((sv - 0.09, su - 0.09, sv + 0.09, su + 0.09))
    if window is not None:
      wv, wu = canvas.coords(window)
      blob = np.exp((np.square(wv - sv) + np.square(wu - su)) * (-1.0 / (2 * 0.03**2)))
      att[window] += 0.14 * blob * lungs[window]
  # Trachea (air column down to the carina) and main bronchi.
  tw = g.trachea_halfwidth
  window = canvas.window((-0.1, mid - tw - 0.01, g.carina_v + 0.01, mid + tw + 0.01))
  if window is not None:
    att[window] -= (
      0.16 * ramp(tw - ad[window], 0.008) * ramp(g.carina_v - v[window], 0.01) * body[window]
    )
  for side in SIDES:
    hil_v, hil_u = g.hilum(side)
    end = (hil_v - 0.01, mid + 0.75 * (hil_u - mid))
    window = canvas.window(
      (g.carina_v - 0.02, min(mid, end[1]) - 0.03, end[0] + 0.03, max(mid, end[1]) + 0.03)
    )
    if window is not None:
      wv, wu = canvas.coords(window)
      dist = polyline_distance(wv, wu, [(g.carina_v, mid), end])
      att[window] -= 0.07 * ramp(0.6 * tw - dist, 0.01) * ramp(wv - g.carina_v + 0.004, 0.008)
  # Spine: a faint column of vertebral bodies with darker disc spaces.
  window = canvas.window(
    (-0.1, mid - g.spine_halfwidth - 0.01, 1.1, mid + g.spine_halfwidth + 0.01)
  )
  if window is not None:
    spine = ramp(g.spine_halfwidth - ad[window], 0.012) * body[window]
    vertebrae = np.cos((v[window] - g.apex_v) * (2 * np.pi / (0.95 * g.rib_spacing)))
    att[window] += (0.064 * style.bone) * spine * (1.0 + 0.25 * vertebrae)
  # Posterior ribs: arches rising from the spine, then curving down along the chest wall.
  bottom = max(g.costophrenic_v) + 0.12
  window = canvas.window(
    (g.apex_v - 0.12, mid - g.cage_halfwidth - 0.05, bottom, mid + g.cage_halfwidth + 0.05)
  )
  if window is not None:
    wv, wad, wair = v[window], ad[window], air[window]
    lateral = np.maximum(wad - g.spine_halfwidth, 0.0)
    t = lateral * (0.4 - g.rib_curvature * lateral)
    t += wv
    phase = (t - g.apex_v) * (1.0 / g.rib_spacing) + g.rib_phase
    off = np.abs(phase - np.floor(phase) - 0.5)
    rib = clip01((0.17 - off) * 14.0) + 0.5 * clip01((0.04 - np.abs(off - 0.16)) * 25.0)
    cage = ramp(g.cage_halfwidth + 0.03 - wad, 0.03) * ramp(lateral, 0.03)
    cage *= ramp(t - g.apex_v + 0.04, 0.02) * ramp(max(g.costophrenic_v) + 0.05 - t, 0.06)
    cage *= 0.3 + 0.7 * wair  # bone contrast is lost over dense tissue
    ribs = (0.12 * style.bone) * rib
    # Anterior ribs: fainter, running down and inwards from the chest wall.
    phase = (wv + 0.5 * wad - g.apex_v) * (1.0 / (1.25 * g.rib_spacing)) + 0.5 * g.rib_phase
    anterior = clip01((0.16 - np.abs(phase - np.floor(phase) - 0.5)) * 12.0)
    ribs += (0.045 * style.bone) * anterior * ramp(wad - 0.1, 0.05)
    att[window] += ribs * cage
  # Clavicles: gently S-curved bars from the sternal notch out to the shoulders.
  (mv, md), (lv, ld) = g.clavicle_medial, g.clavicle_lateral
  window = canvas.window((min(mv, lv) - 0.08, mid - ld - 0.02, max(mv, lv) + 0.05, mid + ld + 0.02))
  if window is not None:
    wv, wad = v[window], ad[window]
    s = clip01((wad - md) * (1.0 / (ld - md)))
    centre_v = mv + (lv - mv) * s - 0.02 * np.sin(np.pi * s)
    clavicle = ramp(g.clavicle_halfwidth * (1.15 - 0.3 * s) - np.abs(wv - centre_v), 0.007)
    clavicle *= ramp(wad - md, 0.01) * ramp(ld - wad, 0.03)
    att[window] += (0.16 * style.bone) * clavicle
  # Gastric bubble under the left dome.
  if style.gastric_bubble:
    dome = g.side_value(g.dome_v, "left")
    gv, gu = dome + 0.055, mid + g.dome_d * 1.05
    window = canvas.window((gv - 0.04, gu - 0.06, gv + 0.04, gu + 0.06))
    if window is not None:
      wv, wu = canvas.coords(window)
      r2 = np.square((wv - gv) * (1.0 / 0.025)) + np.square((wu - gu) * (1.0 / 0.045))
      att[window] -= 0.2 * clip01((1.0 - r2) * 3.0) * ramp(wv - dome - 0.035, 0.01)
  return att, air, vessel_weight


_VESSEL_BANK_SIZE = 8
_VESSEL_HILUM = ((0.42, 0.4), (0.42, 0.6))  # bank-frame hila (v, u) of the right and left lung


def _draw_vessel_tree(
  bank_map: np.ndarray,
  rng: np.random.Generator,
  start: tuple[float, float],
  direction: float,
  length: float,
  width: float,
  depth: int,
) -> None:
  """Draw one branching vessel (recursively) onto a bank map, in place; angles in radians."""
  size = bank_map.shape[0]
  v0, u0 = start
  bend = rng.uniform(-0.25, 0.25)
  points = [(v0, u0)]
  heading = direction
  for _ in range(3):  # three gently bending pieces
    heading += bend / 3.0
    v0, u0 = v0 + math.sin(heading) * length / 3.0, u0 + math.cos(heading) * length / 3.0
    points.append((v0, u0))
  vs, us = zip(*points, strict=True)
  pad = 3.0 * width
  r0, r1 = max(int((min(vs) - pad) * size), 0), min(int((max(vs) + pad) * size) + 2, size)
  c0, c1 = max(int((min(us) - pad) * size), 0), min(int((max(us) + pad) * size) + 2, size)
  if r1 > r0 and c1 > c0:
    centres = pixel_centres(size)
    dist = polyline_distance(centres[r0:r1, None], centres[None, c0:c1], points)
    vessel = np.exp(-np.square(dist / width)) * min(1.0, width * 180.0)
    np.maximum(bank_map[r0:r1, c0:c1], vessel, out=bank_map[r0:r1, c0:c1])
  if depth > 0:
    for sign in (-1.0, 1.0):
      if rng.random() < 0.9:
        _draw_vessel_tree(
          bank_map,
          rng,
          (v0, u0),
          heading + sign * rng.uniform(0.25, 0.6),
          length * rng.uniform(0.7, 0.9),
          width * 0.75,
          depth - 1,
        )


@functools.lru_cache(maxsize=4)
def _vessel_bank(resolution: int) -> np.ndarray:
  """`[8, R, R]` maps of pulmonary vessel trees branching out of both hila (fixed seed, cached).

  Drawing trees segment by segment is too slow per image, so a few are drawn once per process
  and every image samples one through its own anatomy and pose (see `vessel_map`).
  """
  rng = np.random.default_rng(20210927)
  bank = np.zeros((_VESSEL_BANK_SIZE, resolution, resolution), np.float32)
  for k in range(_VESSEL_BANK_SIZE):
    for (hv, hu), outward in zip(_VESSEL_HILUM, (math.pi, 0.0), strict=True):
      for angle in np.linspace(-1.35, 1.35, 7) + rng.uniform(-0.12, 0.12, 7):
        # Fan out from the hilum: upwards, outwards and downwards, never into the mediastinum.
        direction = outward + angle if outward == 0.0 else outward - angle
        _draw_vessel_tree(
          bank[k], rng, (hv, hu), direction, rng.uniform(0.05, 0.07), rng.uniform(0.005, 0.0065), 4
        )
  return bank


def vessel_map(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
  """Pulmonary vessels of this image: a bank tree warped onto its anatomy and pose (0..1).

  The bank frame maps linearly to canonical coordinates (hilum to hilum, lung height to lung
  height), and canonical coordinates are affine in the pixel indices, so the lookup index is a
  sum of a row and a column vector.
  """
  g = canvas.geometry
  resolution = max(128, min(canvas.size, 512))
  bank = _vessel_bank(resolution)[int(rng.integers(_VESSEL_BANK_SIZE))]
  flip = -1.0 if rng.random() < 0.5 else 1.0
  hv = g.hilum("left")[0]
  kv = 0.62 / g.lung_height * resolution
  ku = flip * 0.4 / g.cage_halfwidth * resolution
  c, s, dy, dx = canvas.cos, canvas.sin, canvas.dy, canvas.dx
  # v = 0.5 + c dy + s dx and u = 0.5 - s dy + c dx (see Canvas.coords).
  row = (_VESSEL_HILUM[0][0] * resolution + (0.5 - hv) * kv + (c * kv) * dy)[:, None] + (
    (s * kv) * dx
  )[None, :]
  col = (0.5 * resolution + (0.5 - g.midline_u) * ku - (s * ku) * dy)[:, None] + ((c * ku) * dx)[
    None, :
  ]
  rows = np.clip(row.astype(np.int32), 0, resolution - 1)
  cols = np.clip(col.astype(np.int32), 0, resolution - 1)
  rows *= resolution
  rows += cols
  return bank.ravel().take(rows)
