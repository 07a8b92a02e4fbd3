"""Finding renderers: one function per finding kind that draws it onto a `Canvas`.

Each draws into `canvas.findings` (and dims `canvas.vessels` where lung markings disappear) and
returns the finding's image box, measured from the pixels it changed.
"""

from __future__ import annotations

import math

import numpy as np

from data_pipeline.phantoms.canvas import Canvas, bezier, clip01, ramp
from data_pipeline.phantoms.geometry import side_sign
from data_pipeline.phantoms.placement import FindingSpec
from data_pipeline.phantoms.plans import ImageStyle


def _render_nodule(canvas: Canvas, spec: FindingSpec, style: ImageStyle):
  """A dense sphere (lobulated when a mass); box where it is at least 20% of its peak."""
  cv, cu = spec.center
  r = spec.size
  window = canvas.window((cv - r, cu - r, cv + r, cu + r), margin=0.25 * r)
  if window is None:
    return None
  v, u = canvas.coords(window)
  rng = np.random.default_rng(spec.shape_seed)
  lobes = [(0.0, 0.0, 1.0)] + [
    (*rng.normal(0.0, 0.28 * r, 2), rng.uniform(0.55, 0.75))
    for _ in range(2 if spec.variant == "mass" else 1)
  ]
  sphere = None
  for dv, du, scale in lobes:
    rr = (np.square(v - cv - dv) + np.square(u - cu - du)) * (1.0 / (scale * r) ** 2)
    lobe = np.sqrt(clip01(1.0 - rr))
    sphere = lobe if sphere is None else np.maximum(sphere, lobe, out=sphere)
  contribution = clip01(sphere * 1.6) * (0.5 * (0.9 + 0.05 * spec.severity))
  canvas.findings[window] += contribution
  return canvas.pixel_box(window, contribution, 0.2)


def _render_consolidation(canvas: Canvas, spec: FindingSpec, style: ImageStyle):
  """Fluffy confluent opacity confined to the lung, with air bronchograms and no vessels."""
  cv, cu = spec.center
  r = spec.size
  window = canvas.window((cv - 1.6 * r, cu - 1.6 * r, cv + 1.6 * r, cu + 1.6 * r))
  if window is None:
    return None
  v, u = canvas.coords(window)
  rng = np.random.default_rng(spec.shape_seed)
  density = np.zeros(np.broadcast_shapes(v.shape, u.shape), np.float32)
  for _ in range(int(rng.integers(6, 11))):  # irregular cluster of acinar blobs
    dv, du = rng.normal(0.0, 0.6 * r, 2)
    sigma = r * rng.uniform(0.25, 0.45)
    density += np.exp((np.square(v - cv - dv) + np.square(u - cu - du)) * (-0.5 / sigma**2))
  # Saturating sum: dense where blobs overlap, ill-defined margins where they thin out.
  fluffy = clip01((1.0 - np.exp(-1.2 * density) - 0.12) * (1.0 / 0.88))
  vessels = canvas.vessels[window]
  # Air bronchograms: the branching airways stay lucent inside the opacified lung.
  bronchograms = 1.0 - 0.45 * vessels
  contribution = (
    (0.36 + 0.05 * spec.severity) * fluffy * bronchograms * canvas.lung_mask(spec.side, window)
  )
  canvas.findings[window] += contribution
  vessels *= 1.0 - 0.7 * fluffy
  return canvas.pixel_box(window, contribution, 0.25)


def _render_effusion(canvas: Canvas, spec: FindingSpec, style: ImageStyle):
  """Fluid filling the lung base with a meniscus; blunts the angle and hides the dome."""
  g = canvas.geometry
  side = spec.side
  cp = g.side_value(g.costophrenic_v, side)
  medial = float(g.lung_medial_d(cp))
  height = spec.size
  box = g.side_box(
    side, g.side_value(g.dome_v, side) - height - 0.03, cp + 0.02, medial, g.cage_halfwidth + 0.02
  )
  window = canvas.window(box)
  if window is None:
    return None
  v, u = canvas.coords(window)
  d = g.lateral_distance(u, side)
  across = clip01((d - medial) * (1.0 / (g.cage_halfwidth - medial)))
  # The meniscus: fluid layers above the diaphragm and climbs along the lateral chest wall.
  # A small effusion only blunts the costophrenic angle; larger ones also cover the dome.
  medial_layer, climb = (0.0, 3.0) if spec.severity == 1 else (0.3, 2.0)
  top = g.lung_bottom_v(d, side) - height * (medial_layer + (1.0 - medial_layer) * across**climb)
  fluid = ramp(v - top - 0.015, 0.03)
  if spec.severity == 1:
    fluid *= ramp(across - 0.55, 0.2)  # only the lateral recess
  contribution = (0.95 * style.lung_air) * fluid * canvas.lung_mask(side, window)
  canvas.findings[window] += contribution
  canvas.vessels[window] *= 1.0 - fluid
  return canvas.pixel_box(window, contribution, 0.12)


def _render_pneumothorax(canvas: Canvas, spec: FindingSpec, style: ImageStyle):
  """Lucent rim without lung markings at the apex/lateral wall, edged by a thin pleural line."""
  g = canvas.geometry
  side = spec.side
  v_limit = spec.center[0]
  cp = g.side_value(g.costophrenic_v, side)
  box = g.side_box(
    side,
    g.apex_v - 0.02,
    min(v_limit + 0.03, cp),
    float(g.lung_medial_d(g.apex_v)),
    g.cage_halfwidth + 0.02,
  )
  window = canvas.window(box)
  if window is None:
    return None
  v, u = canvas.coords(window)
  d = g.lateral_distance(u, side)
  # Depth inside the lung measured from the apex and the lateral chest wall.
  from_wall = np.minimum(v - g.lung_top_v(d), g.lung_lateral_d(v, side) - d)
  rim = spec.size * np.sqrt(clip01((v_limit - v) * (1.0 / (0.4 * (v_limit - g.apex_v)))))
  lung = canvas.lung_mask(side, window)
  zone = ramp(rim - from_wall, 0.004) * lung * (rim > 0.003)
  pleural_line = np.exp(np.square(from_wall - rim) * (-1.0 / canvas.line_width(0.0035) ** 2))
  pleural_line *= lung * (rim > 0.004)
  canvas.vessels[window] *= 1.0 - zone  # no lung markings beyond the visceral pleura
  canvas.findings[window] += 0.25 * pleural_line - 0.2 * zone
  return canvas.pixel_box(window, zone, 0.5)


def _render_edema(canvas: Canvas, spec: FindingSpec, style: ImageStyle):
  """Perihilar haze spreading outwards, with indistinct, prominent vessels."""
  hv, hu = spec.center
  sigma = spec.size
  window = canvas.window((hv - 2.2 * sigma, hu - 2.6 * sigma, hv + 2.2 * sigma, hu + 2.6 * sigma))
  if window is None:
    return None
  v, u = canvas.coords(window)
  d = side_sign(spec.side) * (u - hu)  # outwards from the hilum
  haze = np.exp(
    -0.5
    * (
      np.square((v - hv) * (1.0 / sigma))
      + np.square(np.maximum(d, 0.0) * (1.0 / (1.3 * sigma)))
      + np.square(np.minimum(d, 0.0) * (1.0 / (0.5 * sigma)))
    )
  )
  contribution = (0.16 + 0.08 * spec.severity) * haze * canvas.lung_mask(spec.side, window)
  canvas.findings[window] += contribution
  canvas.vessels[window] *= 1.0 + 0.4 * haze  # indistinct, prominent interstitial markings
  return canvas.pixel_box(window, contribution, 0.12)


def _render_atelectasis(canvas: Canvas, spec: FindingSpec, style: ImageStyle):
  """Plate-like linear bands (with basal haze when moderate), confined to the lung."""
  cv, cu = spec.center
  length = spec.size
  window = canvas.window(
    (cv - 0.6 * length, cu - 0.6 * length, cv + 0.6 * length, cu + 0.6 * length)
  )
  if window is None:
    return None
  v, u = canvas.coords(window)
  rng = np.random.default_rng(spec.shape_seed)
  contribution = None
  streaks = 1 if spec.severity == 1 else 2
  width = canvas.line_width(0.008 + 0.004 * spec.severity)
  for k in range(streaks):  # plate-like bands, roughly horizontal
    angle = rng.uniform(-0.3, 0.3)
    offset_v = (k - 0.5 * (streaks - 1)) * 0.03 + rng.uniform(-0.004, 0.004)
    c, s = math.cos(angle), math.sin(angle)
    dv, du = v - cv - offset_v, u - cu
    along = du * c + dv * s
    across = dv * c - du * s
    half = 0.5 * length * (1.0 - 0.2 * k)
    band = np.exp(np.square(across) * (-1.0 / width**2)) * np.sqrt(
      clip01(1.0 - np.square(along * (1.0 / half)))
    )
    contribution = (
      band if contribution is None else np.maximum(contribution, band, out=contribution)
    )
  if spec.severity >= 2:
    haze = np.exp(
      -0.5
      * (
        np.square((v - cv) * (1.0 / (0.35 * length)))
        + np.square((u - cu) * (1.0 / (0.45 * length)))
      )
    )
    np.maximum(contribution, 0.45 * haze, out=contribution)
  contribution *= 0.55 * canvas.lung_mask(spec.side, window)
  canvas.findings[window] += contribution
  return canvas.pixel_box(window, contribution, 0.1)


def _render_cardiomegaly(canvas: Canvas, spec: FindingSpec, style: ImageStyle):
  """The enlarged heart is drawn by the anatomy itself; its box is the cardiac silhouette."""
  box = canvas.geometry.canonical_region_boxes()["cardiac silhouette"]
  return canvas.pose.box_to_image(box)


def _render_device(canvas: Canvas, spec: FindingSpec, style: ImageStyle):
  """Endotracheal tube, central venous catheter or pacemaker: bright thin lines and a can."""
  g = canvas.geometry
  mid = g.midline_u
  if spec.variant == "endotracheal tube":
    tip_v = spec.center[0]
    half = 0.75 * g.trachea_halfwidth
    window = canvas.window((-0.05, mid - half - 0.01, tip_v + 0.01, mid + half + 0.01))
    if window is None:
      return None
    v, u = canvas.coords(window)
    across = np.abs(u - mid)
    wall = np.exp(np.square(across - half) * (-1.0 / canvas.line_width(0.003) ** 2))
    stripe = np.exp(np.square(u - mid + 0.4 * half) * (-1.0 / canvas.line_width(0.0025) ** 2))
    tube = 0.06 * ramp(half - across, 0.004) + 0.22 * wall + 0.3 * stripe
    contribution = tube * ramp(tip_v - v, 0.004)
    canvas.findings[window] += contribution
    return canvas.pixel_box(window, contribution, 0.3)
  if spec.variant == "central venous catheter":
    tip_v, svc_u = spec.center
    rng = np.random.default_rng(spec.shape_seed)
    neck_u = mid - g.neck_halfwidth * rng.uniform(0.45, 0.65)
    entry_v = g.clavicle_medial[0] - 0.02
    path = (
      [(-0.04, neck_u)]
      + bezier(
        (0.02, neck_u),
        (entry_v - 0.04, neck_u),
        (entry_v - 0.04, svc_u),
        (entry_v + 0.03, svc_u),
        8,
      )
      + [(tip_v, svc_u)]
    )
    drawn = canvas.stroke(path, 0.0035)
    if drawn is None:
      return None
    window, line = drawn
    canvas.findings[window] += 0.42 * line
    # The ground-truth box covers the intrathoracic course (the SVC), not the neck.
    v, _ = canvas.coords(window)
    return canvas.pixel_box(window, line * ramp(v - entry_v, 0.01), 0.3)
  # Pacemaker: a bright generator in the left infraclavicular chest and two leads into the heart.
  gv, gu = spec.center
  a, b = 0.7 * spec.size, spec.size
  cavo = g.cavoatrial_v()
  svc_u = mid - float(g.lung_medial_d(g.carina_v)) + 0.014
  hv, hu = g.heart_center
  # Leads: medially under the clavicle, down the SVC, then one into the right atrium and one
  # across to the right ventricular apex.
  entry = (g.clavicle_medial[0] + 0.03, svc_u + 0.01)
  common = bezier(
    (gv, gu - 0.6 * b), (gv - 0.03, gu - 0.12), (entry[0] - 0.01, entry[1] + 0.08), entry, 10
  ) + [(cavo - 0.01, svc_u)]
  atrial = bezier(
    common[-1], (cavo + 0.04, svc_u), (cavo + 0.06, svc_u + 0.01), (cavo + 0.03, svc_u + 0.035), 6
  )
  ventricular = bezier(
    common[-1], (cavo + 0.06, svc_u), (hv + 0.03, mid - 0.01), (hv + 0.04, hu + 0.06), 8
  )
  for path in (common, atrial, ventricular):
    drawn = canvas.stroke(path, 0.003)
    if drawn is not None:
      canvas.findings[drawn[0]] += 0.35 * drawn[1]
  window = canvas.window((gv - a, gu - b, gv + a, gu + b), margin=0.01)
  if window is None:
    return None
  v, u = canvas.coords(window)
  shape = np.square(np.square((v - gv) * (1.0 / a))) + np.square(np.square((u - gu) * (1.0 / b)))
  generator = clip01((1.0 - shape) * 6.0)
  region = canvas.findings[window]
  region += 0.85 * generator
  np.minimum(region, 0.85 + 0.35, out=region)  # leads pass under the can, not brighter than it
  return canvas.pixel_box(window, generator, 0.3)


RENDERERS = {
  "nodule": _render_nodule,
  "consolidation": _render_consolidation,
  "pleural_effusion": _render_effusion,
  "pneumothorax": _render_pneumothorax,
  "cardiomegaly": _render_cardiomegaly,
  "atelectasis": _render_atelectasis,
  "edema": _render_edema,
  "support_device": _render_device,
}
