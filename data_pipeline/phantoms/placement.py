"""Finding placement: which findings a study has, and where in its anatomy each one sits.

`sample_findings` draws 0..3 finding kinds and places each (`FindingSpec`: side, Chest ImaGenome
region, severity, canonical anchor and size) inside the sampled `ChestGeometry`, keeping lesions
clear of the heart and of each other.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_pipeline.phantoms.config import (
  DEFAULT_CONFIG,
  DEVICE_VARIANTS,
  FINDING_INDEX,
  PhantomConfig,
)
from data_pipeline.phantoms.geometry import SIDES, ChestGeometry, side_sign
from data_pipeline.phantoms.streams import pick


@dataclasses.dataclass(frozen=True)
class FindingSpec:
  """One finding placed in the phantom (canonical coordinates, see `geometry`).

  Attributes:
    kind: one of `FINDING_NAMES`.
    side: 'right', 'left' or 'none' (midline / whole-heart findings).
    region: Chest ImaGenome region name where the finding is.
    severity: 0 (n/a), 1 mild/small, 2 moderate, 3 severe/large.
    center: canonical `(v, u)` anchor: the lesion centre (nodule, consolidation, atelectasis),
      the hilum (edema), the costophrenic angle (effusion), the lowest extent of the rim and
      the apex (pneumothorax), the heart centre, or the tip / generator (devices).
    size: kind-specific size: nodule/consolidation radius, effusion height, pneumothorax rim
      width, atelectasis length, edema spread, heart enlargement factor, endotracheal tube tip
      height above the carina, catheter tip height above the cavoatrial junction, pacemaker
      generator half-width (all canonical units except the factor).
    variant: kind-specific variant ('mass', 'apical', a device name, a lung zone, ...).
    group: findings with the same group are one observation described by one phrase
      (bilateral effusions, bibasilar atelectasis, edema).
    shape_seed: seeds the irregular details of the shape.
  """

  kind: str
  side: str
  region: str
  severity: int
  center: tuple[float, float]
  size: float
  variant: str = ""
  group: int = 0
  shape_seed: int = 0


def _severity(rng: np.random.Generator, weights=(0.45, 0.35, 0.2)) -> int:
  """Draw a severity grade 1..len(weights)."""
  return 1 + int(rng.choice(len(weights), p=np.asarray(weights) / np.sum(weights)))


def _zone_region(side: str, zone: str) -> str:
  """Chest ImaGenome region name of a lung zone ('apical', 'upper', 'mid', 'lower')."""
  return f"{side} apical zone" if zone == "apical" else f"{side} {zone} lung zone"


def _place_in_zone(
  rng,
  geometry: ChestGeometry,
  side: str,
  zone: str,
  margin: float,
  taken: list[tuple[float, float, float]],
  tries: int = 40,
) -> tuple[float, float]:
  """A canonical point inside a lung zone, `margin` inside the lung, off the heart and other
  lesions."""
  v0, v1 = geometry.lung_zone_v(side, zone)
  sign = side_sign(side)
  best, best_score = None, -np.inf
  for _ in range(tries):
    v = rng.uniform(v0 + 0.25 * (v1 - v0), v1 - 0.2 * (v1 - v0))
    d_lo = float(geometry.lung_medial_d(v)) + margin
    d_hi = float(geometry.lung_lateral_d(v, side)) - margin
    if d_hi <= d_lo:
      continue
    u = geometry.midline_u + sign * rng.uniform(d_lo, d_hi)
    inside = -float(geometry.lung_signed_distance(v, u, side))
    off_heart = float(geometry.heart_radius2(v, u)) - 1.0
    clearance = min((math.hypot(v - tv, u - tu) - tr - margin for tv, tu, tr in taken), default=1.0)
    score = min(inside - margin, 0.3 * off_heart, clearance)
    if score >= 0:
      return v, u
    if score > best_score:
      best, best_score = (v, u), score
  if best is None:
    v = 0.5 * (v0 + v1)
    return v, geometry.midline_u + sign * 0.5 * (
      geometry.lung_medial_d(v) + geometry.cage_halfwidth
    )
  return best


def _sample_nodule(rng, geometry, group, taken):
  """Nodule (mass when large) in one lung zone, clear of the heart and other lesions."""
  side = pick(rng, SIDES)
  zone = pick(rng, ("apical", "upper", "mid", "lower"), (0.1, 0.35, 0.35, 0.2))
  severity = _severity(rng)
  radius = {1: rng.uniform(0.022, 0.03), 2: rng.uniform(0.031, 0.042), 3: rng.uniform(0.046, 0.06)}[
    severity
  ]
  center = _place_in_zone(rng, geometry, side, zone, radius + 0.012, taken)
  taken.append((center[0], center[1], radius))
  return [
    FindingSpec(
      "nodule",
      side,
      _zone_region(side, zone),
      severity,
      center,
      float(radius),
      variant="mass" if severity == 3 else "nodule",
      group=group,
      shape_seed=int(rng.integers(2**31)),
    )
  ]


def _sample_consolidation(rng, geometry, group, taken):
  """Airspace consolidation centred in an upper, mid or lower lung zone."""
  side = pick(rng, SIDES)
  zone = pick(rng, ("upper", "mid", "lower"), (0.25, 0.35, 0.4))
  severity = _severity(rng, (0.4, 0.4, 0.2))
  radius = {
    1: rng.uniform(0.045, 0.055),
    2: rng.uniform(0.056, 0.066),
    3: rng.uniform(0.068, 0.08),
  }[severity]
  center = _place_in_zone(rng, geometry, side, zone, 0.6 * radius, taken)
  taken.append((center[0], center[1], radius))
  return [
    FindingSpec(
      "consolidation",
      side,
      _zone_region(side, zone),
      severity,
      center,
      float(radius),
      variant=zone,
      group=group,
      shape_seed=int(rng.integers(2**31)),
    )
  ]


def _sample_effusion(rng, geometry, group, taken):
  """Pleural effusion on one side or both; a small one only blunts the costophrenic angle."""
  sides = SIDES if rng.random() < 0.3 else (pick(rng, SIDES),)
  specs = []
  for side in sides:
    severity = _severity(rng, (0.45, 0.35, 0.2))
    height = {1: rng.uniform(0.045, 0.06), 2: rng.uniform(0.1, 0.13), 3: rng.uniform(0.16, 0.2)}[
      severity
    ]
    region = f"{side} costophrenic angle" if severity == 1 else f"{side} lower lung zone"
    cp = geometry.side_value(geometry.costophrenic_v, side)
    u = geometry.midline_u + side_sign(side) * geometry.cage_halfwidth
    specs.append(
      FindingSpec("pleural_effusion", side, region, severity, (cp, u), float(height), group=group)
    )
  return specs


def _sample_pneumothorax(rng, geometry, group, taken):
  """Pneumothorax rim along the apex (small) extending down the lateral wall (moderate, large)."""
  side = pick(rng, SIDES)
  severity = _severity(rng)
  rim = {1: rng.uniform(0.03, 0.04), 2: rng.uniform(0.045, 0.06), 3: rng.uniform(0.065, 0.085)}[
    severity
  ]
  extent, region, variant = {
    1: (0.22, f"{side} apical zone", "apical"),
    2: (0.45, f"{side} upper lung zone", "apicolateral"),
    3: (0.8, f"{side} lung", "lateral"),
  }[severity]
  v_limit = geometry.apex_v + extent * geometry.lung_height
  u = geometry.midline_u + side_sign(side) * geometry.apex_d
  return [
    FindingSpec(
      "pneumothorax",
      side,
      region,
      severity,
      (float(v_limit), float(u)),
      float(rim),
      variant=variant,
      group=group,
    )
  ]


def _sample_cardiomegaly(rng, geometry, group, taken):
  """Heart enlargement to a cardiothoracic ratio clearly above normal."""
  severity = _severity(rng)
  # Target half-width of the heart relative to the chest: a cardiothoracic ratio well above 0.5.
  target = {1: rng.uniform(0.52, 0.56), 2: rng.uniform(0.58, 0.62), 3: rng.uniform(0.64, 0.69)}[
    severity
  ]
  factor = max(1.08, target * geometry.cage_halfwidth / geometry.heart_radii[1])
  return [
    FindingSpec(
      "cardiomegaly",
      "none",
      "cardiac silhouette",
      severity,
      geometry.heart_center,
      float(factor),
      group=group,
    )
  ]


def _sample_atelectasis(rng, geometry, group, taken):
  """Plate-like atelectasis in a mid or lower zone, or bibasilar."""
  bibasilar = rng.random() < 0.25
  sides = SIDES if bibasilar else (pick(rng, SIDES),)
  zone = "lower" if bibasilar else pick(rng, ("mid", "lower"), (0.3, 0.7))
  severity = _severity(rng, (0.6, 0.4))
  specs = []
  for side in sides:
    length = rng.uniform(0.1, 0.14) * (1.0 + 0.2 * (severity - 1))
    center = _place_in_zone(rng, geometry, side, zone, 0.5 * length + 0.005, taken)
    taken.append((center[0], center[1], 0.5 * length))
    specs.append(
      FindingSpec(
        "atelectasis",
        side,
        _zone_region(side, zone),
        severity,
        center,
        float(length),
        variant=zone,
        group=group,
        shape_seed=int(rng.integers(2**31)),
      )
    )
  return specs


def _sample_edema(rng, geometry, group, taken):
  """Bilateral perihilar edema: one finding per lung, described together."""
  severity = _severity(rng)
  spread = {1: 0.07, 2: 0.085, 3: 0.1}[severity] * rng.uniform(0.9, 1.1)
  return [
    FindingSpec(
      "edema", side, f"{side} lung", severity, geometry.hilum(side), float(spread), group=group
    )
    for side in SIDES
  ]


def _sample_device(rng, geometry, group, taken):
  """One support device: endotracheal tube, right internal jugular catheter or left pacemaker."""
  variant = pick(rng, DEVICE_VARIANTS, (0.35, 0.35, 0.3))
  mid = geometry.midline_u
  if variant == "endotracheal tube":
    above_carina = rng.uniform(0.035, 0.08)
    tip_v = geometry.carina_v - above_carina
    return [
      FindingSpec(
        "support_device",
        "none",
        "trachea",
        0,
        (float(tip_v), mid),
        float(above_carina),
        variant=variant,
        group=group,
      )
    ]
  if variant == "central venous catheter":
    cavo = geometry.cavoatrial_v()
    above_junction = 0.0 if rng.random() < 0.5 else rng.uniform(0.03, 0.06)
    tip_v = cavo - above_junction
    u = mid - float(geometry.lung_medial_d(geometry.carina_v)) + 0.014
    return [
      FindingSpec(
        "support_device",
        "right",
        "svc",
        0,
        (float(tip_v), float(u)),
        float(above_junction),
        variant=variant,
        group=group,
        shape_seed=int(rng.integers(2**31)),
      )
    ]
  v0, v1 = geometry.lung_zone_v("left", "upper")
  gv = rng.uniform(v0 + 0.35 * (v1 - v0), v0 + 0.6 * (v1 - v0))
  gu = mid + geometry.cage_halfwidth * rng.uniform(0.55, 0.7)
  return [
    FindingSpec(
      "support_device",
      "left",
      "left upper lung zone",
      0,
      (float(gv), float(gu)),
      float(rng.uniform(0.03, 0.036)),
      variant=variant,
      group=group,
      shape_seed=int(rng.integers(2**31)),
    )
  ]


_SAMPLERS = {
  "nodule": _sample_nodule,
  "consolidation": _sample_consolidation,
  "pleural_effusion": _sample_effusion,
  "pneumothorax": _sample_pneumothorax,
  "cardiomegaly": _sample_cardiomegaly,
  "atelectasis": _sample_atelectasis,
  "edema": _sample_edema,
  "support_device": _sample_device,
}


def sample_findings(
  rng: np.random.Generator, geometry: ChestGeometry, config: PhantomConfig = DEFAULT_CONFIG
) -> tuple[FindingSpec, ...]:
  """Draw 0..`config.max_findings` distinct finding kinds and place them in the anatomy."""
  if config.max_findings == 0 or rng.random() >= config.abnormal_probability:
    return ()
  kinds = [k for k, w in config.finding_weights if w > 0]
  weights = np.array([w for k, w in config.finding_weights if w > 0], dtype=np.float64)
  count_weights = np.array([0.5, 0.32, 0.18][: min(config.max_findings, len(kinds))])
  count = 1 + int(rng.choice(len(count_weights), p=count_weights / count_weights.sum()))
  chosen = rng.choice(len(kinds), size=count, replace=False, p=weights / weights.sum())
  # Kinds are placed in the fixed FINDING_NAMES order; each lesion keeps clear of earlier ones.
  order = sorted(chosen, key=lambda i: FINDING_INDEX[kinds[i]])
  taken: list[tuple[float, float, float]] = []
  specs: list[FindingSpec] = []
  for group, i in enumerate(order):
    specs.extend(_SAMPLERS[kinds[i]](rng, geometry, group, taken))
  return tuple(specs)
