"""The phantom's parametric anatomy (`ChestGeometry`), its pose (`Pose`) and its region boxes.

The same curves (lung borders, diaphragm domes, heart ellipse, ...) are used to render the phantom
and to compute the box of each of the 29 Chest ImaGenome regions (names in `data_pipeline.names`),
so ground-truth boxes stay right after the random pose of every image.

Coordinates. "Canonical" coordinates `(v, u)` are those of the un-posed phantom, normalised to
[0, 1]: `v` runs down, `u` runs right, exactly like image rows and columns. A `Pose` (shift,
rotation, scale about the image centre) maps canonical points to image points `(y, x)`, also in
[0, 1]. Boxes are `[y0, x0, y1, x1]` in normalised image coordinates. Radiological convention: the
patient's right is on the image's left, so "right lung" means small `u`.

This module is numpy-only (the TensorFlow side of the project); it must not import jax or jimte.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import numpy as np

from data_pipeline.names import CHEST_IMAGENOME_REGIONS

# Patient sides. "right" is the patient's right, drawn on the image's left.
SIDES: tuple[str, str] = ("right", "left")

Box = tuple[float, float, float, float]


def _clip(x, low: float, high: float):
  """`np.clip` that stays a fast Python float for float input."""
  if isinstance(x, float):
    return min(max(x, low), high)
  return np.clip(x, low, high)


def side_sign(side: str) -> float:
  """Direction of `side` along `u`: -1 for the patient's right (image left), +1 for the left."""
  if side == "right":
    return -1.0
  if side == "left":
    return 1.0
  raise ValueError(f"side must be 'right' or 'left', got {side!r}")


@dataclasses.dataclass(frozen=True)
class Pose:
  """Similarity transform from canonical phantom coordinates to image coordinates.

  `image = centre + shift + scale * R(angle) (canonical - centre)` with the centre at (0.5, 0.5);
  `angle` in radians, positive turning the `v` axis towards `+u` (clockwise on screen).
  """

  shift_y: float = 0.0
  shift_x: float = 0.0
  angle: float = 0.0
  scale: float = 1.0

  def to_image(self, v, u):
    """Map canonical `(v, u)` (scalars or arrays) to image `(y, x)`."""
    c, s = math.cos(self.angle), math.sin(self.angle)
    dv, du = np.subtract(v, 0.5), np.subtract(u, 0.5)
    y = 0.5 + self.shift_y + self.scale * (c * dv - s * du)
    x = 0.5 + self.shift_x + self.scale * (s * dv + c * du)
    return y, x

  def to_canonical(self, y, x):
    """Map image `(y, x)` (scalars or arrays) back to canonical `(v, u)`; inverse of
    `to_image`."""
    c, s = math.cos(self.angle), math.sin(self.angle)
    inv = 1.0 / self.scale
    dy = (np.subtract(y, 0.5 + self.shift_y)) * inv
    dx = (np.subtract(x, 0.5 + self.shift_x)) * inv
    v = 0.5 + c * dy + s * dx
    u = 0.5 - s * dy + c * dx
    return v, u

  def box_to_image(self, box: Box, clip: bool = True) -> Box:
    """Axis-aligned image box enclosing the posed canonical box `[v0, u0, v1, u1]`."""
    v0, u0, v1, u1 = box
    c, s, k = math.cos(self.angle), math.sin(self.angle), self.scale
    ys, xs = [], []
    for v, u in ((v0, u0), (v0, u1), (v1, u0), (v1, u1)):  # plain floats: called per window
      dv, du = v - 0.5, u - 0.5
      ys.append(0.5 + self.shift_y + k * (c * dv - s * du))
      xs.append(0.5 + self.shift_x + k * (s * dv + c * du))
    out = (min(ys), min(xs), max(ys), max(xs))
    if clip:
      out = tuple(min(max(b, 0.0), 1.0) for b in out)
    return out

  def boxes_to_image(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
    """Vectorised `box_to_image` for canonical boxes `[N, 4]`; returns float32 `[N, 4]`."""
    boxes = np.asarray(boxes, dtype=np.float64)
    v = boxes[:, [0, 0, 2, 2]]
    u = boxes[:, [1, 3, 1, 3]]
    y, x = self.to_image(v, u)
    out = np.stack([y.min(axis=1), x.min(axis=1), y.max(axis=1), x.max(axis=1)], axis=1)
    if clip:
      out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ChestGeometry:
  """Parameters of one phantom's anatomy in canonical coordinates (see the module docstring).

  Per-side values are `(right, left)` pairs. Distances `d` below are measured from the midline
  towards the named side (`d = side_sign(side) * (u - midline_u)`), so one set of curves serves
  both hemithoraces.
  """

  midline_u: float = 0.5
  apex_v: float = 0.145  # top of the lung apices
  costophrenic_v: tuple[float, float] = (0.79, 0.81)  # lowest, lateral point of each lung
  dome_v: tuple[float, float] = (0.70, 0.725)  # top of each diaphragm dome
  dome_d: float = 0.17  # distance of the dome tops from the midline
  cage_halfwidth: float = 0.36  # lateral lung border at the base
  apex_d: float = 0.17  # distance of each apex's top from the midline
  apex_curvature: float = 6.5  # how fast the apex dome falls away from its top
  mediastinum_halfwidth: float = 0.055  # medial lung border at the apex
  heart_center: tuple[float, float] = (0.615, 0.535)  # (v, u)
  heart_radii: tuple[float, float] = (0.115, 0.155)  # (along the tilted short axis, long axis)
  heart_tilt: float = 0.45  # radians; long axis runs down towards the patient's left
  trachea_halfwidth: float = 0.017
  carina_v: float = 0.32
  spine_halfwidth: float = 0.04
  clavicle_medial: tuple[float, float] = (0.19, 0.035)  # (v, d) of the sternal end
  clavicle_lateral: tuple[float, float] = (0.12, 0.34)  # (v, d) of the acromial end
  clavicle_halfwidth: float = 0.011
  aortic_knob: tuple[float, float, float] = (0.29, 0.562, 0.03)  # (v, u, radius)
  body_halfwidth: float = 0.43
  neck_halfwidth: float = 0.10
  shoulder_v: float = 0.11
  rib_spacing: float = 0.072
  rib_phase: float = 0.3
  rib_curvature: float = 1.5

  # ------------------------------------------------------------------ sampling and variants
  @property
  def lung_height(self) -> float:
    """Vertical extent of the lungs from apex to the lower costophrenic angle."""
    return max(self.costophrenic_v) - self.apex_v

  def side_value(self, pair: tuple[float, float], side: str) -> float:
    """Pick the right or left member of a per-side `(right, left)` pair."""
    return pair[0] if side == "right" else pair[1]

  def with_enlarged_heart(self, factor: float) -> ChestGeometry:
    """Copy with the heart enlarged by `factor` (mostly widening, shifting down and to the
    left)."""
    rv, ru = self.heart_radii
    cv, cu = self.heart_center
    grow_v = 1.0 + 0.55 * (factor - 1.0)
    bigger = dataclasses.replace(self, heart_radii=(rv * grow_v, ru * factor))
    # Keep the heart resting on the diaphragm: the bottom drops a little, the top rises.
    rise = bigger.heart_extent()[0] - self.heart_extent()[0]
    return dataclasses.replace(
      bigger, heart_center=(cv - 0.7 * rise, cu + 0.45 * ru * (factor - 1.0))
    )

  # ------------------------------------------------------------------ curves
  # Each curve takes a Python float (fast scalar path, used by placement and region boxes) or
  # a numpy array (used by rendering).
  def lateral_distance(self, u, side: str):
    """Distance from the midline towards `side` (negative on the other side)."""
    return side_sign(side) * (u - self.midline_u)

  def lung_top_v(self, d):
    """The apex dome: `v` of the lung's upper border at lateral distance `d`."""
    offset = d - self.apex_d
    return self.apex_v + self.apex_curvature * (offset * offset)

  def lung_bottom_v(self, d, side: str):
    """The diaphragm dome: `v` of the lung's lower border at lateral distance `d`."""
    cp = self.side_value(self.costophrenic_v, side)
    dome = self.side_value(self.dome_v, side)
    k = (cp - dome) / (self.cage_halfwidth - self.dome_d) ** 2
    offset = d - self.dome_d
    return dome + k * (offset * offset)

  def lung_lateral_d(self, v, side: str):
    """Lateral lung border (inner chest wall) at height `v`: widest at the base."""
    cp = self.side_value(self.costophrenic_v, side)
    t = _clip((v - self.apex_v) * (1.5 / (cp - self.apex_v)), 0.0, 1.0)
    return self.cage_halfwidth * (
      0.5 + 0.5 * (math.sqrt(t) if isinstance(t, float) else np.sqrt(t))
    )

  def lung_medial_d(self, v):
    """Medial lung border (edge of the mediastinum) at height `v`: slightly wider low down."""
    t = _clip((v - self.apex_v) * (1.0 / self.lung_height), 0.0, 1.0)
    return self.mediastinum_halfwidth * (1.0 + 0.3 * t)

  def lung_signed_distance(self, v, u, side: str):
    """Approximate signed distance to the lung field of `side` (negative inside), in canonical
    units.

    The lung is the intersection of four half-planes bent into curves (apex dome, diaphragm dome,
    lateral chest wall, mediastinum); the distance is the largest of the four border offsets.
    """
    d = self.lateral_distance(u, side)
    offsets = (
      self.lung_top_v(d) - v,
      v - self.lung_bottom_v(d, side),
      d - self.lung_lateral_d(v, side),
      self.lung_medial_d(v) - d,
    )
    if isinstance(d, float) and isinstance(v, float):
      return max(offsets)
    dist = np.maximum(offsets[0], offsets[1])
    dist = np.maximum(dist, offsets[2], out=dist)
    return np.maximum(dist, offsets[3], out=dist)

  def heart_radius2(self, v, u):
    """Squared normalised radius in the heart ellipse (<1 inside the cardiac silhouette)."""
    cv, cu = self.heart_center
    rs, rl = self.heart_radii
    c, s = math.cos(self.heart_tilt), math.sin(self.heart_tilt)
    dv, du = v - cv, u - cu
    along = (du * c + dv * s) * (1.0 / rl)
    across = (dv * c - du * s) * (1.0 / rs)
    return along * along + across * across

  def heart_extent(self) -> tuple[float, float]:
    """Half extents `(ext_v, ext_u)` of the axis-aligned box around the tilted heart ellipse."""
    rs, rl = self.heart_radii
    c, s = math.cos(self.heart_tilt), math.sin(self.heart_tilt)
    ext_u = math.sqrt((rl * c) ** 2 + (rs * s) ** 2)
    ext_v = math.sqrt((rl * s) ** 2 + (rs * c) ** 2)
    return ext_v, ext_u

  def hilum(self, side: str) -> tuple[float, float]:
    """Canonical `(v, u)` of the centre of the hilum of `side`."""
    v = self.apex_v + 0.42 * self.lung_height
    return v, self.midline_u + side_sign(side) * (self.lung_medial_d(v) + 0.035)

  def lung_zone_v(self, side: str, zone: str) -> tuple[float, float]:
    """Vertical range of a lung zone: 'apical' (top fifth), 'upper'/'mid'/'lower' (thirds)."""
    top = self.apex_v
    height = self.side_value(self.costophrenic_v, side) - top
    ranges = {
      "apical": (0.0, 0.2),
      "upper": (0.0, 1.0 / 3.0),
      "mid": (1.0 / 3.0, 2.0 / 3.0),
      "lower": (2.0 / 3.0, 1.0),
    }
    a, b = ranges[zone]
    return top + a * height, top + b * height

  # ------------------------------------------------------------------ regions
  def side_box(self, side: str, v0: float, v1: float, d0: float, d1: float) -> Box:
    """Canonical box `[v0, u0, v1, u1]` spanning lateral distances `d0..d1` on `side`."""
    u_a = self.midline_u + side_sign(side) * d0
    u_b = self.midline_u + side_sign(side) * d1
    return (v0, min(u_a, u_b), v1, max(u_a, u_b))

  def canonical_region_boxes(self) -> dict[str, Box]:
    """Box `[v0, u0, v1, u1]` of each of the 29 regions in canonical (un-posed) coordinates.

    Cached per geometry (it is needed several times per phantom); treat the result as read-only.
    """
    return _canonical_region_boxes(self)

  def _compute_region_boxes(self) -> dict[str, Box]:
    """Uncached body of `canonical_region_boxes`."""
    boxes: dict[str, Box] = {}
    mid = self.midline_u
    ext_v, ext_u = self.heart_extent()
    hv, hu = self.heart_center
    heart = (hv - ext_v, hu - ext_u, hv + ext_v, hu + ext_u)
    for side in SIDES:
      cp = self.side_value(self.costophrenic_v, side)
      dome = self.side_value(self.dome_v, side)
      medial = float(self.lung_medial_d(self.apex_v))
      boxes[f"{side} lung"] = self.side_box(side, self.apex_v, cp, medial, self.cage_halfwidth)
      for zone in ("upper", "mid", "lower"):
        v0, v1 = self.lung_zone_v(side, zone)
        lateral = float(self.lung_lateral_d(v1, side))
        boxes[f"{side} {zone} lung zone"] = self.side_box(side, v0, v1, medial, lateral)
      v0, v1 = self.lung_zone_v(side, "apical")
      boxes[f"{side} apical zone"] = self.side_box(
        side, v0, v1, medial, float(self.lung_lateral_d(v1, side))
      )
      hil_v, hil_u = self.hilum(side)
      hil_d = abs(hil_u - mid)
      boxes[f"{side} hilar structures"] = self.side_box(
        side, hil_v - 0.07, hil_v + 0.07, hil_d - 0.045, hil_d + 0.06
      )
      boxes[f"{side} costophrenic angle"] = self.side_box(
        side, cp - 0.09, cp + 0.015, self.cage_halfwidth - 0.12, self.cage_halfwidth + 0.01
      )
      boxes[f"{side} hemidiaphragm"] = self.side_box(
        side, dome - 0.02, cp + 0.015, float(self.lung_medial_d(dome)), self.cage_halfwidth
      )
    carina = self.carina_v
    boxes["trachea"] = (
      0.0,
      mid - self.trachea_halfwidth - 0.006,
      carina,
      mid + self.trachea_halfwidth + 0.006,
    )
    boxes["carina"] = (carina - 0.03, mid - 0.035, carina + 0.035, mid + 0.035)
    boxes["spine"] = (
      self.apex_v - 0.1,
      mid - self.spine_halfwidth,
      max(self.costophrenic_v) + 0.05,
      mid + self.spine_halfwidth,
    )
    for side in SIDES:
      (mv, md), (lv, ld) = self.clavicle_medial, self.clavicle_lateral
      pad = self.clavicle_halfwidth + 0.01
      box = self.side_box(side, min(mv, lv) - pad, max(mv, lv) + pad + 0.012, md, ld)
      boxes[f"{side} clavicle"] = box
    kv, ku, kr = self.aortic_knob
    boxes["aortic arch"] = (kv - kr - 0.01, ku - kr - 0.02, kv + kr, ku + kr + 0.005)
    upper_half = float(self.lung_medial_d(self.apex_v)) + 0.01
    boxes["upper mediastinum"] = (
      self.apex_v,
      min(mid - upper_half, ku - kr),
      carina + 0.03,
      max(mid + upper_half, ku + kr),
    )
    boxes["mediastinum"] = (
      self.apex_v,
      min(mid - upper_half, heart[1]),
      heart[2],
      max(mid + upper_half, heart[3]),
    )
    boxes["cardiac silhouette"] = heart
    svc_d = float(self.lung_medial_d(carina))
    cavo_v = self.cavoatrial_v()
    boxes["svc"] = (self.clavicle_medial[0], mid - svc_d - 0.006, cavo_v, mid - 0.012)
    boxes["cavoatrial junction"] = (
      cavo_v - 0.03,
      mid - svc_d - 0.02,
      cavo_v + 0.03,
      mid - svc_d + 0.03,
    )
    boxes["right atrium"] = (cavo_v, heart[1], heart[2] - 0.2 * (heart[2] - heart[0]), mid + 0.01)
    boxes["abdomen"] = (
      min(self.dome_v) + 0.02,
      mid - self.cage_halfwidth,
      1.0,
      mid + self.cage_halfwidth,
    )
    return boxes

  def cavoatrial_v(self) -> float:
    """Height where the superior vena cava meets the right atrium (top of the right heart
    border)."""
    ext_v, _ = self.heart_extent()
    return self.heart_center[0] - 0.6 * ext_v

  def region_boxes(self, pose: Pose) -> np.ndarray:
    """Image-space boxes `[29, 4]` (float32, `[y0, x0, y1, x1]` in [0, 1]) in the standard
    order."""
    canonical = self.canonical_region_boxes()
    return pose.boxes_to_image(np.array([canonical[name] for name in CHEST_IMAGENOME_REGIONS]))


@functools.lru_cache(maxsize=256)
def _canonical_region_boxes(geometry: ChestGeometry) -> dict[str, Box]:
  """Memoised region boxes of a (frozen, hashable) geometry."""
  return geometry._compute_region_boxes()


def sample_geometry(rng: np.random.Generator) -> ChestGeometry:
  """Draw one plausible adult chest: body and lung size, dome heights, heart size, rib pitch, ..."""
  apex = rng.uniform(0.12, 0.17)
  cp_right = rng.uniform(0.76, 0.83)
  cp_left = cp_right + rng.uniform(0.0, 0.025)
  rise = rng.uniform(0.075, 0.11)
  dome_right = cp_right - rise
  dome_left = cp_left - rise + rng.uniform(0.0, 0.03)  # the left dome usually sits lower
  cage = rng.uniform(0.33, 0.385)
  mediastinum = rng.uniform(0.06, 0.078)
  height = max(cp_right, cp_left) - apex
  long_radius = cage * rng.uniform(0.39, 0.46)  # normal cardiothoracic ratio ~0.40-0.48
  short_radius = long_radius * rng.uniform(0.7, 0.8)
  tilt = rng.uniform(0.25, 0.45)
  ext_v = math.hypot(long_radius * math.sin(tilt), short_radius * math.cos(tilt))
  heart_v = dome_left + rng.uniform(0.0, 0.03) - ext_v  # the heart rests on the left dome
  heart_u = 0.5 + rng.uniform(0.01, 0.03)
  carina = apex + rng.uniform(0.16, 0.21)
  clav_med_v = apex + rng.uniform(0.03, 0.06)
  clav_lat_v = apex - rng.uniform(0.04, 0.08)
  trachea = rng.uniform(0.014, 0.02)
  knob_r = rng.uniform(0.025, 0.034)
  return ChestGeometry(
    apex_v=apex,
    costophrenic_v=(cp_right, cp_left),
    dome_v=(dome_right, dome_left),
    dome_d=cage * rng.uniform(0.42, 0.52),
    cage_halfwidth=cage,
    apex_d=cage * rng.uniform(0.44, 0.52),
    apex_curvature=rng.uniform(5.0, 8.0),
    mediastinum_halfwidth=mediastinum,
    heart_center=(heart_v, heart_u),
    heart_radii=(short_radius, long_radius),
    heart_tilt=tilt,
    trachea_halfwidth=trachea,
    carina_v=carina,
    spine_halfwidth=rng.uniform(0.034, 0.045),
    clavicle_medial=(clav_med_v, rng.uniform(0.03, 0.045)),
    clavicle_lateral=(clav_lat_v, cage + rng.uniform(-0.02, 0.03)),
    clavicle_halfwidth=rng.uniform(0.012, 0.016),
    aortic_knob=(
      carina - rng.uniform(0.01, 0.04),
      0.5 + mediastinum + rng.uniform(-0.012, 0.0),
      knob_r,
    ),
    body_halfwidth=cage + rng.uniform(0.07, 0.11),
    neck_halfwidth=rng.uniform(0.12, 0.15),
    shoulder_v=apex - rng.uniform(0.02, 0.05),
    rib_spacing=height / rng.uniform(8.6, 9.6),
    rib_phase=rng.uniform(0.0, 1.0),
    rib_curvature=rng.uniform(2.0, 2.8),
  )


def sample_pose(
  rng: np.random.Generator,
  *,
  max_shift: float = 0.04,
  max_rotation_deg: float = 6.0,
  scale_range: tuple[float, float] = (0.9, 1.05),
) -> Pose:
  """Draw a random patient position: small shift, in-plane rotation and magnification."""
  return Pose(
    shift_y=float(rng.uniform(-max_shift, max_shift)),
    shift_x=float(rng.uniform(-max_shift, max_shift)),
    angle=float(np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))),
    scale=float(rng.uniform(*scale_range)),
  )


def box_inside_fraction(box, container) -> float:
  """Fraction of the area of `box` that lies inside `container` (both `[y0, x0, y1, x1]`)."""
  y0, x0 = max(box[0], container[0]), max(box[1], container[1])
  y1, x1 = min(box[2], container[2]), min(box[3], container[3])
  inter = max(0.0, y1 - y0) * max(0.0, x1 - x0)
  area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
  return inter / area if area > 0 else 0.0


def region_box_dict(boxes: np.ndarray) -> Mapping[str, np.ndarray]:
  """View a `[29, 4]` box array as a mapping from region name to box."""
  return {name: boxes[i] for i, name in enumerate(CHEST_IMAGENOME_REGIONS)}
