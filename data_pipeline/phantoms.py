"""The built-in synthetic chest X-ray set: procedural frontal chest phantoms with reports and ground
truth.

Each example is a grayscale frontal chest radiograph drawn from a parametric anatomy
(`data_pipeline.anatomy`: body outline, lungs, heart, diaphragm domes, ribs, clavicles, spine,
trachea, hila), posed, contrasted and noised at random, with 0..3 findings drawn at named Chest
ImaGenome regions, and a radiology-style report (findings, then impression) that describes them,
negates some absent ones and otherwise reads like the Indiana University reports.

Ground truth travels with every example: each finding's name, region, image box, severity and the
exact words of the report that describe it (with character spans), plus 14 CheXpert-order labels
(1 positive, 0 negated, -1 uncertain, nan unmentioned) and the boxes of all 29 regions.

Everything is a pure function of `(seed, split, index)`: example `i` is generated on its own,
from independent numpy Generators seeded with `[seed, split_code(split), index, stream]`, so a
split can be produced in any order or in parallel. Rendering is vectorised numpy on cached
coordinate grids.

Entry points: `generate_example`, `generate_split`, `findings_to_arrays`, `as_tf_dataset`;
`plan_example` + `render_plan` give control over the findings of an example (e.g. render the
same patient with and without a finding). `python -m data_pipeline.phantoms --out DIR --n 8`
writes PNGs and reports for a person to look at. numpy-only except `as_tf_dataset` (imports
TensorFlow lazily).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from data_pipeline import anatomy
from data_pipeline.anatomy import ChestGeometry, Pose, side_sign
from data_pipeline.names import CHEST_IMAGENOME_REGIONS, CHEXPERT_OBSERVATIONS, region_id

# ----------------------------------------------------------------------------------------------
# Vocabularies
# ----------------------------------------------------------------------------------------------

# Finding kinds the phantom can draw; the index is the `finding_id` of the padded arrays.
FINDING_NAMES: tuple[str, ...] = (
  "nodule",  # nodule or, when large, mass
  "consolidation",
  "pleural_effusion",
  "pneumothorax",
  "cardiomegaly",
  "atelectasis",
  "edema",
  "support_device",  # endotracheal tube, central venous catheter or pacemaker
)
FINDING_INDEX: dict[str, int] = {name: i for i, name in enumerate(FINDING_NAMES)}

# The 14 CheXpert observations in the standard order (label vector positions); one definition.
CHEXPERT_LABELS: tuple[str, ...] = CHEXPERT_OBSERVATIONS
CHEXPERT_INDEX: dict[str, int] = {name: i for i, name in enumerate(CHEXPERT_LABELS)}

# The CheXpert observation each finding kind makes positive.
FINDING_TO_CHEXPERT: dict[str, str] = {
  "nodule": "Lung Lesion",
  "consolidation": "Consolidation",
  "pleural_effusion": "Pleural Effusion",
  "pneumothorax": "Pneumothorax",
  "cardiomegaly": "Cardiomegaly",
  "atelectasis": "Atelectasis",
  "edema": "Edema",
  "support_device": "Support Devices",
}

# Severity grades; 0 is used for findings without a grade (support devices) and for padding.
SEVERITY_NAMES: tuple[str, ...] = ("none", "mild", "moderate", "severe")

# Ground-truth rows per example in the padded arrays (3 findings, each at most bilateral).
MAX_FINDINGS = 6

# Default relative frequency of each finding kind among abnormal studies.
DEFAULT_FINDING_WEIGHTS: tuple[tuple[str, float], ...] = (
  ("nodule", 1.0),
  ("consolidation", 1.0),
  ("pleural_effusion", 1.0),
  ("pneumothorax", 0.8),
  ("cardiomegaly", 1.0),
  ("atelectasis", 0.9),
  ("edema", 0.7),
  ("support_device", 0.8),
)

_DEVICE_VARIANTS = ("endotracheal tube", "central venous catheter", "pacemaker")
_LUNG_KINDS = frozenset({"nodule", "consolidation", "atelectasis", "edema", "pneumothorax"})
_CM_PER_UNIT = 38.0  # canonical units -> centimetres, for sizes quoted in reports


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
  """Knobs of the synthetic set. All defaults give the embedded default training set.

  Attributes:
    image_size: side of the square image in pixels.
    abnormal_probability: chance that a study has at least one finding.
    max_findings: most finding kinds per study (0..3); a bilateral finding counts once.
    finding_weights: relative frequency of each kind among abnormal studies.
    noise_std_range: range of the per-image quantum-noise standard deviation (intensity units).
    max_shift, max_rotation_deg, scale_range: random pose of the patient.
    same_patient_probability: chance that studies `2k` and `2k+1` belong to one patient.
    comparison_probability: chance of a comparison sentence in a first study (always in follow-ups).
    redaction_probability: chance of using a boilerplate variant with an IU-style "XXXX" redaction.
    hedge_probability: chance that a consolidation impression adds "may represent pneumonia"
      (Pneumonia labelled -1, uncertain).
    negation_probability: chance that a topic with nothing abnormal gets negated statements.
  """

  image_size: int = 256
  abnormal_probability: float = 0.65
  max_findings: int = 3
  finding_weights: tuple[tuple[str, float], ...] = DEFAULT_FINDING_WEIGHTS
  noise_std_range: tuple[float, float] = (0.008, 0.028)
  max_shift: float = 0.04
  max_rotation_deg: float = 6.0
  scale_range: tuple[float, float] = (0.9, 1.05)
  same_patient_probability: float = 0.3
  comparison_probability: float = 0.2
  redaction_probability: float = 0.2
  hedge_probability: float = 0.3
  negation_probability: float = 0.8

  def __post_init__(self):
    if self.image_size < 32:
      raise ValueError(f"image_size must be >= 32, got {self.image_size}")
    if not 0 <= self.max_findings <= 3:
      raise ValueError(f"max_findings must be in 0..3, got {self.max_findings}")
    for name in (
      "abnormal_probability",
      "same_patient_probability",
      "comparison_probability",
      "redaction_probability",
      "hedge_probability",
      "negation_probability",
    ):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    for kind, weight in self.finding_weights:
      if kind not in FINDING_INDEX:
        raise ValueError(f"unknown finding kind {kind!r}; expected one of {FINDING_NAMES}")
      if weight < 0:
        raise ValueError(f"finding weight of {kind!r} must be >= 0, got {weight}")
    if self.max_findings > 0 and sum(w for _, w in self.finding_weights) <= 0:
      raise ValueError("finding_weights must have a positive total when max_findings > 0")


# ----------------------------------------------------------------------------------------------
# Plans: everything random about an example, drawn before anything is rendered or written
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FindingSpec:
  """One finding placed in the phantom (canonical coordinates, see `data_pipeline.anatomy`).

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


@dataclasses.dataclass(frozen=True)
class ImageStyle:
  """Exposure and rendering constants of one image (contrast window, noise, tissue densities)."""

  window_low: float
  window_high: float
  gamma: float
  noise_std: float
  shading: float
  soft_tissue: float
  lung_air: float
  bone: float
  markings: float
  gastric_bubble: bool


@dataclasses.dataclass(frozen=True)
class ExamplePlan:
  """Everything drawn at random for one study; rendering and report writing are functions of it."""

  index: int
  split: str
  seed: int
  study_id: str
  patient_id: str
  is_followup: bool
  geometry: ChestGeometry
  pose: Pose
  style: ImageStyle
  findings: tuple[FindingSpec, ...]

  def effective_geometry(self) -> ChestGeometry:
    """The anatomy as drawn: the base geometry with cardiomegaly applied if present."""
    geometry = self.geometry
    for spec in self.findings:
      if spec.kind == "cardiomegaly":
        geometry = geometry.with_enlarged_heart(spec.size)
    return geometry


_STREAMS = {"anatomy": 0, "pose": 1, "findings": 2, "report": 3, "noise": 4, "pairing": 5}


def split_code(split: str) -> int:
  """Stable integer for a split name (CRC32), so seeds differ between splits."""
  return zlib.crc32(split.encode("utf-8"))


def _rng(seed: int, split: str, key: int, stream: str, *extra: int) -> np.random.Generator:
  """Independent Generator for one stream of one example (or pair of examples)."""
  if seed < 0 or key < 0:
    raise ValueError(f"seed and index must be non-negative, got seed={seed} index={key}")
  return np.random.default_rng([seed, split_code(split), key, _STREAMS[stream], *extra])


def _sample_style(rng: np.random.Generator, config: PhantomConfig) -> ImageStyle:
  """Per-image exposure: window, gamma, noise, shading and tissue densities."""
  return ImageStyle(
    window_low=float(rng.uniform(-0.12, -0.02)),
    window_high=float(rng.uniform(1.2, 1.45)),
    gamma=float(rng.uniform(0.85, 1.25)),
    noise_std=float(rng.uniform(*config.noise_std_range)),
    shading=float(rng.uniform(0.0, 0.06)),
    soft_tissue=float(rng.uniform(0.95, 1.05)),
    lung_air=float(rng.uniform(0.6, 0.7)),
    bone=float(rng.uniform(0.85, 1.15)),
    markings=float(rng.uniform(0.1, 0.14)),
    gastric_bubble=bool(rng.random() < 0.6),
  )


def plan_example(
  index: int, *, split: str = "train", seed: int = 0, config: PhantomConfig = PhantomConfig()
) -> ExamplePlan:
  """Draw the anatomy, pose, exposure and findings of example `index` of a split.

  Studies `2k` and `2k+1` share one patient (same anatomy, new pose and findings) with
  probability `config.same_patient_probability`; the odd one is then the follow-up study.
  """
  index = int(index)
  pair = index // 2
  prefix = f"syn-{split}-s{seed}"
  shared = _rng(seed, split, pair, "pairing", 1).random() < config.same_patient_probability
  if shared:
    patient_id = f"{prefix}-p{pair:06d}"
    anatomy_rng = _rng(seed, split, pair, "anatomy", 1)
    is_followup = index % 2 == 1
  else:
    patient_id = f"{prefix}-p{pair:06d}-{index % 2}"
    anatomy_rng = _rng(seed, split, index, "anatomy")
    is_followup = False
  geometry = anatomy.sample_geometry(anatomy_rng)
  pose_rng = _rng(seed, split, index, "pose")
  pose = anatomy.sample_pose(
    pose_rng,
    max_shift=config.max_shift,
    max_rotation_deg=config.max_rotation_deg,
    scale_range=config.scale_range,
  )
  style = _sample_style(pose_rng, config)
  findings = sample_findings(_rng(seed, split, index, "findings"), geometry, config)
  return ExamplePlan(
    index=index,
    split=split,
    seed=seed,
    study_id=f"{prefix}-{index:07d}",
    patient_id=patient_id,
    is_followup=is_followup,
    geometry=geometry,
    pose=pose,
    style=style,
    findings=findings,
  )


# ----------------------------------------------------------------------------------------------
# Finding placement
# ----------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
  """One element of `options` (optionally weighted)."""
  if weights is None:
    return options[int(rng.integers(len(options)))]
  p = np.asarray(weights, dtype=np.float64)
  return options[int(rng.choice(len(options), p=p / p.sum()))]


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
  side = _pick(rng, anatomy.SIDES)
  zone = _pick(rng, ("apical", "upper", "mid", "lower"), (0.1, 0.35, 0.35, 0.2))
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
  side = _pick(rng, anatomy.SIDES)
  zone = _pick(rng, ("upper", "mid", "lower"), (0.25, 0.35, 0.4))
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
  sides = anatomy.SIDES if rng.random() < 0.3 else (_pick(rng, anatomy.SIDES),)
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
  side = _pick(rng, anatomy.SIDES)
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
  sides = anatomy.SIDES if bibasilar else (_pick(rng, anatomy.SIDES),)
  zone = "lower" if bibasilar else _pick(rng, ("mid", "lower"), (0.3, 0.7))
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
    for side in anatomy.SIDES
  ]


def _sample_device(rng, geometry, group, taken):
  """One support device: endotracheal tube, right internal jugular catheter or left pacemaker."""
  variant = _pick(rng, _DEVICE_VARIANTS, (0.35, 0.35, 0.3))
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
  rng: np.random.Generator, geometry: ChestGeometry, config: PhantomConfig = PhantomConfig()
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


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> np.ndarray:
  """Normalised pixel-centre coordinates `(i + 0.5) / size`."""
  return ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _smooth_taps(size: int, grid: int, taps: int = 4) -> tuple[np.ndarray, np.ndarray]:
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


def _smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
  """Unit-variance smooth Gaussian noise with features about `size / grid` pixels across.

  White noise on a `grid x grid` lattice, interpolated with a separable truncated Gaussian:
  a few gathers and multiply-adds, no BLAS call (which is slow when cores are contended).
  """
  cells = rng.standard_normal((grid, grid), dtype=np.float32)
  index, weight = _smooth_taps(size, grid)
  rows = weight[0][:, None] * cells[index[0]]  # [size, grid]
  for k in range(1, len(index)):
    rows += weight[k][:, None] * cells[index[k]]
  out = rows[:, index[0]] * weight[0][None, :]  # [size, size]
  for k in range(1, len(index)):
    out += rows[:, index[k]] * weight[k][None, :]
  return out


_LUNG_EDGE = 0.02  # width of the soft edge of the lung fields, canonical units


def _clip01(x: np.ndarray) -> np.ndarray:
  """Clip to [0, 1] in place (cheaper than `np.clip` on the many small calls of a phantom)."""
  np.maximum(x, 0.0, out=x)
  return np.minimum(x, 1.0, out=x)


def _ramp(x, width: float) -> np.ndarray:
  """Soft step: 0 for x <= -width/2, 1 for x >= width/2, linear between (a new array).

  A negative `width` gives the falling step of `-x` without computing `-x`.
  """
  out = x * (1.0 / width)
  out += 0.5
  return _clip01(out)


def _polyline_distance(
  v: np.ndarray, u: np.ndarray, points: Sequence[tuple[float, float]]
) -> np.ndarray:
  """Distance from every `(v, u)` to a polyline through canonical `points`."""
  best = None
  for (v0, u0), (v1, u1) in zip(points[:-1], points[1:], strict=True):
    dv, du = v1 - v0, u1 - u0
    length2 = max(dv * dv + du * du, 1e-12)
    t = _clip01(((v - v0) * dv + (u - u0) * du) * (1.0 / length2))
    dist2 = np.square(v - v0 - t * dv) + np.square(u - u0 - t * du)
    best = dist2 if best is None else np.minimum(best, dist2, out=best)
  return np.sqrt(best)


def _bezier(p0, p1, p2, p3, n: int = 12) -> list[tuple[float, float]]:
  """Points of a cubic Bezier curve (for catheters and pacemaker leads)."""
  t = np.linspace(0.0, 1.0, n)[:, None]
  pts = (
    ((1 - t) ** 3) * np.array(p0)
    + 3 * ((1 - t) ** 2) * t * np.array(p1)
    + 3 * (1 - t) * (t**2) * np.array(p2)
    + (t**3) * np.array(p3)
  )
  return [tuple(p) for p in pts]


class _Canvas:
  """One posed image grid: canonical coordinates of its pixels and the layers being drawn.

  Coordinates are affine in the pixel indices, so they are kept as two 1-D vectors and only
  expanded for the window being drawn (`coords`).
  """

  def __init__(self, size: int, geometry: ChestGeometry, pose: Pose):
    self.size = size
    self.geometry = geometry
    self.pose = pose
    centres = _pixel_centres(size)
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
    return _ramp(-self.geometry.lung_signed_distance(v, u, side), _LUNG_EDGE)

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
      values = np.exp(np.square(_polyline_distance(v, u, [p, q])) * (-1.0 / width**2))
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


def _draw_anatomy(canvas: _Canvas, style: ImageStyle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
  body = _ramp(np.minimum(torso, ad - g.neck_halfwidth), -0.03)
  thickness = ad * (1.0 / (g.body_halfwidth + 0.02))
  thickness *= thickness
  thickness = np.sqrt(_clip01(1.0 - thickness))
  att = body * (style.soft_tissue * 0.15 + (style.soft_tissue * 0.85) * thickness)
  # Lungs: air removes attenuation, except where the heart and aortic knob displace the lung.
  lungs = np.zeros_like(v)
  regions = g.canonical_region_boxes()
  for side in anatomy.SIDES:  # each lung only inside its own window
    window = canvas.window(regions[f"{side} lung"], margin=0.03)
    if window is not None:
      wv, wu = v[window], u[window]
      lungs[window] += _ramp(g.lung_signed_distance(wv, wu, side), -_LUNG_EDGE)
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
      organ = _clip01((1.0 - occupancy(*canvas.coords(window))) * 4.0)
      air[window] *= 1.0 - organ
      att[window] += 0.03 * organ
  # Air is thinner towards the bases and the chest wall, where more soft tissue overlaps.
  depth = _clip01((v - g.apex_v) * (1.0 / g.lung_height))
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
  for side in anatomy.SIDES:
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
      0.16 * _ramp(tw - ad[window], 0.008) * _ramp(g.carina_v - v[window], 0.01) * body[window]
    )
  for side in anatomy.SIDES:
    hil_v, hil_u = g.hilum(side)
    end = (hil_v - 0.01, mid + 0.75 * (hil_u - mid))
    window = canvas.window(
      (g.carina_v - 0.02, min(mid, end[1]) - 0.03, end[0] + 0.03, max(mid, end[1]) + 0.03)
    )
    if window is not None:
      wv, wu = canvas.coords(window)
      dist = _polyline_distance(wv, wu, [(g.carina_v, mid), end])
      att[window] -= 0.07 * _ramp(0.6 * tw - dist, 0.01) * _ramp(wv - g.carina_v + 0.004, 0.008)
  # Spine: a faint column of vertebral bodies with darker disc spaces.
  window = canvas.window(
    (-0.1, mid - g.spine_halfwidth - 0.01, 1.1, mid + g.spine_halfwidth + 0.01)
  )
  if window is not None:
    spine = _ramp(g.spine_halfwidth - ad[window], 0.012) * body[window]
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
    rib = _clip01((0.17 - off) * 14.0) + 0.5 * _clip01((0.04 - np.abs(off - 0.16)) * 25.0)
    cage = _ramp(g.cage_halfwidth + 0.03 - wad, 0.03) * _ramp(lateral, 0.03)
    cage *= _ramp(t - g.apex_v + 0.04, 0.02) * _ramp(max(g.costophrenic_v) + 0.05 - t, 0.06)
    cage *= 0.3 + 0.7 * wair  # bone contrast is lost over dense tissue
    ribs = (0.12 * style.bone) * rib
    # Anterior ribs: fainter, running down and inwards from the chest wall.
    phase = (wv + 0.5 * wad - g.apex_v) * (1.0 / (1.25 * g.rib_spacing)) + 0.5 * g.rib_phase
    anterior = _clip01((0.16 - np.abs(phase - np.floor(phase) - 0.5)) * 12.0)
    ribs += (0.045 * style.bone) * anterior * _ramp(wad - 0.1, 0.05)
    att[window] += ribs * cage
  # Clavicles: gently S-curved bars from the sternal notch out to the shoulders.
  (mv, md), (lv, ld) = g.clavicle_medial, g.clavicle_lateral
  window = canvas.window((min(mv, lv) - 0.08, mid - ld - 0.02, max(mv, lv) + 0.05, mid + ld + 0.02))
  if window is not None:
    wv, wad = v[window], ad[window]
    s = _clip01((wad - md) * (1.0 / (ld - md)))
    centre_v = mv + (lv - mv) * s - 0.02 * np.sin(np.pi * s)
    clavicle = _ramp(g.clavicle_halfwidth * (1.15 - 0.3 * s) - np.abs(wv - centre_v), 0.007)
    clavicle *= _ramp(wad - md, 0.01) * _ramp(ld - wad, 0.03)
    att[window] += (0.16 * style.bone) * clavicle
  # Gastric bubble under the left dome.
  if style.gastric_bubble:
    dome = g.side_value(g.dome_v, "left")
    gv, gu = dome + 0.055, mid + g.dome_d * 1.05
    window = canvas.window((gv - 0.04, gu - 0.06, gv + 0.04, gu + 0.06))
    if window is not None:
      wv, wu = canvas.coords(window)
      r2 = np.square((wv - gv) * (1.0 / 0.025)) + np.square((wu - gu) * (1.0 / 0.045))
      att[window] -= 0.2 * _clip01((1.0 - r2) * 3.0) * _ramp(wv - dome - 0.035, 0.01)
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
    centres = _pixel_centres(size)
    dist = _polyline_distance(centres[r0:r1, None], centres[None, c0:c1], points)
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
  and every image samples one through its own anatomy and pose (see `_vessel_map`).
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


def _vessel_map(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
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
  # v = 0.5 + c dy + s dx and u = 0.5 - s dy + c dx (see _Canvas.coords).
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


# --- finding renderers: each draws into canvas.findings (and dims canvas.vessels where lung
# --- markings disappear) and returns the finding's image box.


def _render_nodule(canvas: _Canvas, spec: FindingSpec, style: ImageStyle):
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
    lobe = np.sqrt(_clip01(1.0 - rr))
    sphere = lobe if sphere is None else np.maximum(sphere, lobe, out=sphere)
  contribution = _clip01(sphere * 1.6) * (0.5 * (0.9 + 0.05 * spec.severity))
  canvas.findings[window] += contribution
  return canvas.pixel_box(window, contribution, 0.2)


def _render_consolidation(canvas: _Canvas, spec: FindingSpec, style: ImageStyle):
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
  fluffy = _clip01((1.0 - np.exp(-1.2 * density) - 0.12) * (1.0 / 0.88))
  vessels = canvas.vessels[window]
  # Air bronchograms: the branching airways stay lucent inside the opacified lung.
  bronchograms = 1.0 - 0.45 * vessels
  contribution = (
    (0.36 + 0.05 * spec.severity) * fluffy * bronchograms * canvas.lung_mask(spec.side, window)
  )
  canvas.findings[window] += contribution
  vessels *= 1.0 - 0.7 * fluffy
  return canvas.pixel_box(window, contribution, 0.25)


def _render_effusion(canvas: _Canvas, spec: FindingSpec, style: ImageStyle):
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
  across = _clip01((d - medial) * (1.0 / (g.cage_halfwidth - medial)))
  # The meniscus: fluid layers above the diaphragm and climbs along the lateral chest wall.
  # A small effusion only blunts the costophrenic angle; larger ones also cover the dome.
  medial_layer, climb = (0.0, 3.0) if spec.severity == 1 else (0.3, 2.0)
  top = g.lung_bottom_v(d, side) - height * (medial_layer + (1.0 - medial_layer) * across**climb)
  fluid = _ramp(v - top - 0.015, 0.03)
  if spec.severity == 1:
    fluid *= _ramp(across - 0.55, 0.2)  # only the lateral recess
  contribution = (0.95 * style.lung_air) * fluid * canvas.lung_mask(side, window)
  canvas.findings[window] += contribution
  canvas.vessels[window] *= 1.0 - fluid
  return canvas.pixel_box(window, contribution, 0.12)


def _render_pneumothorax(canvas: _Canvas, spec: FindingSpec, style: ImageStyle):
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
  rim = spec.size * np.sqrt(_clip01((v_limit - v) * (1.0 / (0.4 * (v_limit - g.apex_v)))))
  lung = canvas.lung_mask(side, window)
  zone = _ramp(rim - from_wall, 0.004) * lung * (rim > 0.003)
  pleural_line = np.exp(np.square(from_wall - rim) * (-1.0 / canvas.line_width(0.0035) ** 2))
  pleural_line *= lung * (rim > 0.004)
  canvas.vessels[window] *= 1.0 - zone  # no lung markings beyond the visceral pleura
  canvas.findings[window] += 0.25 * pleural_line - 0.2 * zone
  return canvas.pixel_box(window, zone, 0.5)


def _render_edema(canvas: _Canvas, spec: FindingSpec, style: ImageStyle):
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


def _render_atelectasis(canvas: _Canvas, spec: FindingSpec, style: ImageStyle):
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
      _clip01(1.0 - np.square(along * (1.0 / half)))
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


def _render_cardiomegaly(canvas: _Canvas, spec: FindingSpec, style: ImageStyle):
  """The enlarged heart is drawn by the anatomy itself; its box is the cardiac silhouette."""
  box = canvas.geometry.canonical_region_boxes()["cardiac silhouette"]
  return canvas.pose.box_to_image(box)


def _render_device(canvas: _Canvas, spec: FindingSpec, style: ImageStyle):
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
    tube = 0.06 * _ramp(half - across, 0.004) + 0.22 * wall + 0.3 * stripe
    contribution = tube * _ramp(tip_v - v, 0.004)
    canvas.findings[window] += contribution
    return canvas.pixel_box(window, contribution, 0.3)
  if spec.variant == "central venous catheter":
    tip_v, svc_u = spec.center
    rng = np.random.default_rng(spec.shape_seed)
    neck_u = mid - g.neck_halfwidth * rng.uniform(0.45, 0.65)
    entry_v = g.clavicle_medial[0] - 0.02
    path = (
      [(-0.04, neck_u)]
      + _bezier(
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
    return canvas.pixel_box(window, line * _ramp(v - entry_v, 0.01), 0.3)
  # Pacemaker: a bright generator in the left infraclavicular chest and two leads into the heart.
  gv, gu = spec.center
  a, b = 0.7 * spec.size, spec.size
  cavo = g.cavoatrial_v()
  svc_u = mid - float(g.lung_medial_d(g.carina_v)) + 0.014
  hv, hu = g.heart_center
  # Leads: medially under the clavicle, down the SVC, then one into the right atrium and one
  # across to the right ventricular apex.
  entry = (g.clavicle_medial[0] + 0.03, svc_u + 0.01)
  common = _bezier(
    (gv, gu - 0.6 * b), (gv - 0.03, gu - 0.12), (entry[0] - 0.01, entry[1] + 0.08), entry, 10
  ) + [(cavo - 0.01, svc_u)]
  atrial = _bezier(
    common[-1], (cavo + 0.04, svc_u), (cavo + 0.06, svc_u + 0.01), (cavo + 0.03, svc_u + 0.035), 6
  )
  ventricular = _bezier(
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
  generator = _clip01((1.0 - shape) * 6.0)
  region = canvas.findings[window]
  region += 0.85 * generator
  np.minimum(region, 0.85 + 0.35, out=region)  # leads pass under the can, not brighter than it
  return canvas.pixel_box(window, generator, 0.3)


_RENDERERS = {
  "nodule": _render_nodule,
  "consolidation": _render_consolidation,
  "pleural_effusion": _render_effusion,
  "pneumothorax": _render_pneumothorax,
  "cardiomegaly": _render_cardiomegaly,
  "atelectasis": _render_atelectasis,
  "edema": _render_edema,
  "support_device": _render_device,
}


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
  index, weight = _smooth_taps(size, knots)
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
  canvas = _Canvas(image_size, geometry, plan.pose)
  half = image_size >= 160 and image_size % 2 == 0
  coarse = _Canvas(image_size // 2, geometry, plan.pose) if half else canvas
  noise_rng = _rng(plan.seed, plan.split, plan.index, "noise")
  attenuation, air, vessel_weight = _draw_anatomy(coarse, style)
  # Lung mottling (low-frequency texture), then window and display gamma, then uneven exposure.
  mottle = _smooth_noise(noise_rng, coarse.size, max(4, min(32, coarse.size // 4)))
  attenuation += (0.18 * style.markings) * mottle * air
  scale = 1.0 / (style.window_high - style.window_low)
  intensity = _clip01((attenuation - style.window_low) * scale)
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
  canvas.vessels = _vessel_map(canvas, noise_rng)
  boxes = []
  for spec in plan.findings:
    box = _RENDERERS[spec.kind](canvas, spec, style)
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


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mention:
  """Where the report describes one finding group: the whole phrase and its core term (char
  spans)."""

  words: str
  span: tuple[int, int]
  term: str
  term_span: tuple[int, int]
  severity_word: str


@dataclasses.dataclass(frozen=True)
class Report:
  """A written report with its labels and the mention of each finding group."""

  text: str
  findings_text: str
  impression_text: str
  labels: np.ndarray  # float32 [14]
  mentions: dict[int, Mention]  # finding group -> mention in the findings section


@dataclasses.dataclass
class _Phrase:
  """A noun phrase naming a finding, with the word(s) that carry the finding and its severity."""

  text: str
  term: str
  severity_word: str = ""
  grammar: str = (
    "a"  # 'a' (countable), 'mass' (uncountable), 'plural', or 'clause' ("heart is ...")
  )


_SEVERITY_ADJ = {
  "size": {1: ("small",), 2: ("moderate", "moderate-sized"), 3: ("large",)},
  "grade": {1: ("mild",), 2: ("moderate",), 3: ("severe", "marked")},
  "grade_adv": {1: ("mildly",), 2: ("moderately",), 3: ("severely", "markedly")},
  "extent": {1: ("small", "mild"), 2: ("moderate",), 3: ("extensive", "dense")},
}

_ZONE_NOUNS = {
  "apical": ("{s} apex", "{s} lung apex", "{s} apical zone"),
  "upper": ("{s} upper lung zone", "{s} upper lobe", "{s} upper lung"),
  "mid": ("{s} mid lung zone", "{s} midlung", "{s} mid lung"),
  "lower": ("{s} lower lung zone", "{s} lung base", "{s} lower lobe"),
}
_ZONE_MODIFIERS = {
  "apical": ("{s} apical",),
  "upper": ("{s} upper lobe", "{s} upper lung"),
  "mid": ("{s} midlung", "{s} mid lung"),
  "lower": ("{s} basilar", "{s} lower lobe", "{s} base"),
}


def _zone_of(spec: FindingSpec) -> str:
  """Lung zone word of a region ('apical', 'upper', 'mid', 'lower')."""
  for zone in ("apical", "upper", "mid", "lower"):
    if zone in spec.region:
      return zone
  raise ValueError(f"{spec.region!r} is not a lung zone")


def _phrase_for(group: Sequence[FindingSpec], rng: np.random.Generator) -> _Phrase:
  """A radiology phrase for one finding group: kind synonym, severity, laterality and place."""
  spec = group[0]
  kind = spec.kind
  sev = spec.severity
  if kind == "nodule":
    zone = _zone_of(spec)
    if spec.variant == "mass":
      noun = _pick(rng, ("mass", "masslike opacity", "pulmonary mass"))
    else:
      noun = _pick(rng, ("nodule", "nodular opacity", "nodular density", "pulmonary nodule"))
    size_cm = f"{2 * spec.size * _CM_PER_UNIT:.1f} cm"
    size_word = size_cm if sev == 2 else _pick(rng, (size_cm, _SEVERITY_ADJ["size"][sev][0]))
    if rng.random() < 0.5:
      where = _pick(rng, _ZONE_NOUNS[zone]).format(s=spec.side)
      return _Phrase(f"{size_word} {noun} in the {where}", noun, size_word)
    where = _pick(rng, _ZONE_MODIFIERS[zone]).format(s=spec.side)
    return _Phrase(f"{size_word} {where} {noun}", noun, size_word)
  if kind == "consolidation":
    zone = _zone_of(spec)
    noun = _pick(
      rng,
      (
        "consolidation",
        "airspace consolidation",
        "focal consolidation",
        "consolidative opacity",
        "patchy consolidation",
      ),
    )
    adj = _pick(rng, _SEVERITY_ADJ["extent"][sev])
    grammar = "a" if noun.endswith("opacity") else "mass"
    if rng.random() < 0.5:
      where = _pick(rng, _ZONE_NOUNS[zone]).format(s=spec.side)
      return _Phrase(f"{adj} {noun} in the {where}", noun, adj, grammar)
    where = _pick(rng, _ZONE_MODIFIERS[zone]).format(s=spec.side)
    return _Phrase(f"{adj} {where} {noun}", noun, adj, grammar)
  if kind == "pleural_effusion":
    if len(group) == 2:
      right, left = group if group[0].side == "right" else group[::-1]
      noun = _pick(rng, ("pleural effusions", "effusions"))
      if right.severity == left.severity:
        adj = _pick(rng, _SEVERITY_ADJ["size"][right.severity])
        return _Phrase(f"{adj} bilateral {noun}", noun, adj, "plural")
      big, small = ("right", "left") if right.severity > left.severity else ("left", "right")
      return _Phrase(f"bilateral {noun}, {big} greater than {small}", noun, "", "plural")
    adj = _pick(rng, _SEVERITY_ADJ["size"][sev])
    side = spec.side
    if sev == 1 and rng.random() < 0.3:
      noun = _pick(rng, ("pleural effusion", "effusion"))
      return _Phrase(
        f"blunting of the {side} costophrenic angle consistent with a {adj} {noun}",
        noun,
        adj,
        "mass",
      )
    form = int(rng.integers(3))
    if form == 0:
      return _Phrase(f"{adj} {side} pleural effusion", "pleural effusion", adj)
    if form == 1:
      return _Phrase(f"{adj} {side}-sided effusion", "effusion", adj)
    amount = {1: "small", 2: "moderate", 3: "large"}[sev]
    return _Phrase(f"{amount} amount of {side} pleural fluid", "pleural fluid", amount)
  if kind == "pneumothorax":
    adj = _pick(rng, _SEVERITY_ADJ["size"][sev])
    where = (
      f"{spec.side} apical"
      if spec.variant == "apical"
      else _pick(rng, (spec.side, f"{spec.side}-sided"))
    )
    return _Phrase(f"{adj} {where} pneumothorax", "pneumothorax", adj)
  if kind == "cardiomegaly":
    form = int(rng.integers(4))
    if form == 0:
      adj = _pick(rng, _SEVERITY_ADJ["grade"][sev])
      return _Phrase(f"{adj} cardiomegaly", "cardiomegaly", adj, "mass")
    adv = _pick(rng, _SEVERITY_ADJ["grade_adv"][sev])
    if form == 1:
      return _Phrase(f"{adv} enlarged cardiac silhouette", "enlarged cardiac silhouette", adv)
    if form == 2:
      adj = _pick(rng, _SEVERITY_ADJ["grade"][sev])
      return _Phrase(
        f"{adj} enlargement of the cardiac silhouette",
        "enlargement of the cardiac silhouette",
        adj,
        "mass",
      )
    subject = _pick(rng, ("heart", "cardiac silhouette"))
    return _Phrase(f"{subject} is {adv} enlarged", "enlarged", adv, "clause")
  if kind == "atelectasis":
    adj = _pick(rng, _SEVERITY_ADJ["grade"][sev][:1] + (("minimal",) if sev == 1 else ()))
    if len(group) == 2:
      form = _pick(
        rng,
        (
          "bibasilar atelectasis",
          "bibasilar linear atelectasis",
          "bibasilar subsegmental atelectasis",
        ),
      )
      return _Phrase(f"{adj} {form}", "atelectasis", adj, "mass")
    zone = _zone_of(spec)
    form = int(rng.integers(3))
    if form == 0:
      where = _pick(rng, _ZONE_MODIFIERS[zone]).format(s=spec.side)
      return _Phrase(f"{adj} {where} atelectasis", "atelectasis", adj, "mass")
    where = _pick(rng, _ZONE_NOUNS[zone]).format(s=spec.side)
    if form == 1:
      noun = _pick(
        rng, ("linear atelectasis", "subsegmental atelectasis", "plate-like atelectasis")
      )
      return _Phrase(f"{adj} {noun} in the {where}", "atelectasis", adj, "mass")
    return _Phrase(
      f"streaky opacity in the {where} consistent with {adj} atelectasis", "atelectasis", adj, "a"
    )
  if kind == "edema":
    adj = _pick(rng, _SEVERITY_ADJ["grade"][sev])
    form = int(rng.integers(4))
    if form == 0:
      return _Phrase(f"{adj} pulmonary edema", "pulmonary edema", adj, "mass")
    if form == 1:
      return _Phrase(f"{adj} interstitial edema", "interstitial edema", adj, "mass")
    if form == 2:
      return _Phrase(f"{adj} bilateral perihilar edema", "perihilar edema", adj, "mass")
    return _Phrase(
      f"bilateral perihilar opacities consistent with {adj} pulmonary edema",
      "pulmonary edema",
      adj,
      "plural",
    )
  if kind == "support_device":
    if spec.variant == "endotracheal tube":
      noun = _pick(rng, ("endotracheal tube", "ET tube"))
      cm = max(1.0, round(spec.size * _CM_PER_UNIT * 2.0) / 2.0)
      return _Phrase(f"{noun} with tip {cm:g} cm above the carina", noun, "", "a")
    if spec.variant == "central venous catheter":
      noun = _pick(
        rng,
        ("central venous catheter", "internal jugular central line", "internal jugular catheter"),
      )
      if spec.size < 0.01:
        tip = "at the cavoatrial junction"
      else:
        tip = _pick(rng, ("in the SVC", "in the superior vena cava", "projecting over the SVC"))
      return _Phrase(f"right {noun} with tip {tip}", noun, "", "a")
    noun = _pick(rng, ("pacemaker", "cardiac pacemaker", "dual-lead pacemaker"))
    prefix = _pick(rng, ("left-sided", "left chest wall", "left subclavian"))
    return _Phrase(
      f"{prefix} {noun} with leads in the right atrium and right ventricle", noun, "", "a"
    )
  raise ValueError(f"unknown finding kind {kind!r}")


def _article(word: str) -> str:
  """'a' or 'an' before `word`."""
  return "an" if word[:1].lower() in "aeiou" else "a"


def _capitalize(text: str) -> str:
  """Upper-case the first character only (`str.capitalize` would lower-case the rest)."""
  return text[:1].upper() + text[1:]


def _wrap_positive(phrase: _Phrase, rng: np.random.Generator, followup: bool) -> tuple[str, int]:
  """Put a finding phrase into a findings-section sentence; returns the sentence and phrase
  offset."""
  p = phrase.text
  if phrase.grammar == "clause":
    templates = ["The {P}."]
  elif phrase.grammar == "plural":
    templates = (
      ["There are {P}.", "{P}."]
      if "," in p
      else ["There are {P}.", "{P}.", "{P} are noted.", "{P} are present."]
    )
  elif phrase.grammar == "mass":
    templates = [
      "There is {P}.",
      "{P}.",
      "{P} is noted.",
      "{P} is present.",
      "There is evidence of {P}.",
    ]
    if followup:
      templates.append("Again noted is {P}.")
  else:
    art = _article(p)
    templates = [
      f"There is {art} {{P}}.",
      f"{_capitalize(art)} {{P}} is noted.",
      "{P}.",
      f"{_capitalize(art)} {{P}} is seen.",
      "{P} is present.",
    ]
    if followup:
      templates.append(f"Again seen is {art} {{P}}.")
  template = _pick(rng, templates)
  offset = template.index("{P}")
  if offset == 0:
    p = _capitalize(p)
  return template.replace("{P}", p), offset


# Normal / negated statements: (text, CheXpert labels it negates, finding kinds it contradicts).
_HEART_NORMAL = (
  (
    "The heart size and mediastinal contours are within normal limits.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  (
    "Heart size and mediastinal contour are within normal limits.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  ("The heart is normal in size.", ("Cardiomegaly",), ()),
  ("Heart size is normal.", ("Cardiomegaly",), ()),
  (
    "Normal heart size and mediastinal contours.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  (
    "The cardiomediastinal silhouette is within normal limits.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  (
    "The heart and mediastinum are unremarkable.",
    ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    (),
  ),
  ("Heart size and pulmonary vascularity are within normal limits.", ("Cardiomegaly",), ("edema",)),
)
_HEART_REDACTED = (
  (
    "Heart XXXX, mediastinum and bony structures are unremarkable.",
    ("Enlarged Cardiomediastinum",),
    (),
  ),
)
_MEDIASTINUM_NORMAL = (
  ("The mediastinal contours are within normal limits.", ("Enlarged Cardiomediastinum",), ()),
  ("Normal mediastinal contours.", ("Enlarged Cardiomediastinum",), ()),
)
_LUNGS_CLEAR = (
  ("The lungs are clear.", (), tuple(_LUNG_KINDS)),
  ("Lungs are clear bilaterally.", (), tuple(_LUNG_KINDS)),
  ("The lungs are clear without focal consolidation.", ("Consolidation",), tuple(_LUNG_KINDS)),
  ("Both lungs are clear and expanded.", (), tuple(_LUNG_KINDS)),
)
_LUNG_NEGATIVES = (
  ("No focal airspace consolidation.", ("Consolidation",), ("consolidation",)),
  ("There is no focal consolidation.", ("Consolidation",), ("consolidation",)),
  ("No focal airspace disease.", ("Lung Opacity",), ("consolidation", "atelectasis", "edema")),
  (
    "No suspicious pulmonary opacity.",
    ("Lung Opacity",),
    ("consolidation", "atelectasis", "edema", "nodule"),
  ),
  ("No suspicious pulmonary nodules or masses.", ("Lung Lesion",), ("nodule",)),
  ("There is no pulmonary edema.", ("Edema",), ("edema",)),
  ("No pulmonary edema.", ("Edema",), ("edema",)),
  ("No pneumonia.", ("Pneumonia",), ("consolidation",)),
  ("Pulmonary vascularity is within normal limits.", (), ("edema",)),
)
_PLEURA_BOTH = (
  ("No pneumothorax or pleural effusion.", ("Pneumothorax", "Pleural Effusion"), ()),
  ("There is no pleural effusion or pneumothorax.", ("Pneumothorax", "Pleural Effusion"), ()),
  ("No pleural effusions or pneumothoraces.", ("Pneumothorax", "Pleural Effusion"), ()),
  ("No pneumothorax or effusion.", ("Pneumothorax", "Pleural Effusion"), ()),
)
_PLEURA_EFFUSION = (
  ("No pleural effusion.", ("Pleural Effusion",), ()),
  ("There is no pleural effusion.", ("Pleural Effusion",), ()),
  ("No pleural effusions.", ("Pleural Effusion",), ()),
)
_PLEURA_EFFUSION_REDACTED = (
  ("There are no XXXX of a pleural effusion.", ("Pleural Effusion",), ()),
)
_PLEURA_PNEUMOTHORAX = (
  ("No pneumothorax.", ("Pneumothorax",), ()),
  ("There is no evidence of pneumothorax.", ("Pneumothorax",), ()),
  ("There is no pneumothorax.", ("Pneumothorax",), ()),
)
_BONES = (
  ("No acute bony abnormality.", (), ()),
  ("The visualized osseous structures are intact.", (), ()),
  ("No acute osseous abnormality.", (), ()),
  ("Degenerative changes of the thoracic spine.", (), ()),
  ("No displaced rib fractures.", ("Fracture",), ()),
)
_NORMAL_IMPRESSIONS = (
  "No acute cardiopulmonary abnormality.",
  "No active disease.",
  "No acute cardiopulmonary disease.",
  "No acute cardiopulmonary process.",
  "No radiographic evidence of acute cardiopulmonary disease.",
  "Normal chest.",
)
_COMPARISONS = ("Comparison is made to the prior study.", "Comparison to prior chest radiograph.")
_COMPARISONS_REDACTED = (
  "Comparison: XXXX.",
  "Comparison is made to the prior study from XXXX.",
  "Compared with the prior radiograph from XXXX.",
)
_VIEWS = (
  "PA and lateral views of the chest.",
  "Frontal and lateral views of the chest.",
  "Frontal view of the chest.",
)


def _labels_in_phrase(text: str) -> list[str]:
  """Secondary observations a positive phrase asserts besides its kind (e.g. 'opacity')."""
  lowered = text.lower()
  found = []
  if "opaci" in lowered or "airspace disease" in lowered:
    found.append("Lung Opacity")
  if "cardiomediastinal" in lowered:
    found.append("Enlarged Cardiomediastinum")
  return found


def _eligible(
  statements, present_kinds, labels
) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
  """Statements that neither negate an asserted observation nor contradict a present finding."""
  out = []
  for text, negated, contradicts in statements:
    if any(
      not np.isnan(labels[CHEXPERT_INDEX[n]]) and labels[CHEXPERT_INDEX[n]] != 0 for n in negated
    ):
      continue
    if any(k in present_kinds for k in contradicts):
      continue
    out.append((text, negated, contradicts))
  return out


def _redundant(statement, chosen: Sequence[str], labels: np.ndarray) -> bool:
  """Whether a normal statement only repeats what earlier statements of the report said."""
  text, negated, _ = statement
  if negated and all(labels[CHEXPERT_INDEX[n]] == 0 for n in negated):
    return True
  for topic in ("vascularity", "lungs are clear", "bony", "osseous", "rib"):
    if topic in text and any(topic in earlier for earlier in chosen):
      return True
  return False


def _groups(findings: Sequence[FindingSpec]) -> list[list[FindingSpec]]:
  """Findings grouped into observations (bilateral findings together), in plan order."""
  by_group: dict[int, list[FindingSpec]] = {}
  for spec in findings:
    by_group.setdefault(spec.group, []).append(spec)
  return list(by_group.values())


def _impression_item(
  group: Sequence[FindingSpec], rng: np.random.Generator, config: PhantomConfig, labels: np.ndarray
) -> str:
  """One impression line for a finding group (may hedge consolidation as possible pneumonia)."""
  spec = group[0]
  if spec.kind == "cardiomegaly":
    return f"{_capitalize(_pick(rng, _SEVERITY_ADJ['grade'][spec.severity]))} cardiomegaly."
  phrase = _phrase_for(group, rng)
  for name in _labels_in_phrase(phrase.text):
    labels[CHEXPERT_INDEX[name]] = 1.0
  if spec.kind == "support_device":
    return f"{_capitalize(phrase.term)} in appropriate position."
  item = _capitalize(phrase.text)
  if spec.kind == "consolidation" and rng.random() < config.hedge_probability:
    labels[CHEXPERT_INDEX["Pneumonia"]] = -1.0
    return item + _pick(rng, (", which may represent pneumonia.", ", concerning for pneumonia."))
  if spec.kind == "nodule" and rng.random() < 0.5:
    return item + ". Recommend chest CT for further evaluation."
  return item + "."


def write_report(plan: ExamplePlan, config: PhantomConfig = PhantomConfig()) -> Report:
  """Write the findings and impression of a study, its CheXpert labels and each finding's mention.

  Every finding is described once in the findings section (that mention is its ground-truth
  words) and summarised again in the impression; absent observations may be negated, never
  present ones; normal topics get IU-style boilerplate.
  """
  rng = _rng(plan.seed, plan.split, plan.index, "report")
  labels = np.full(len(CHEXPERT_LABELS), np.nan, np.float32)
  groups = _groups(plan.findings)
  present = {spec.kind for spec in plan.findings}
  pathology = present - {"support_device"}

  # Positive statements first, so negations can be checked against everything asserted.
  topic_of = {
    "cardiomegaly": "heart",
    "pleural_effusion": "pleura",
    "pneumothorax": "pleura",
    "support_device": "devices",
  }
  positives: dict[str, list[tuple[str, int, _Phrase, int]]] = {}
  for group in groups:
    spec = group[0]
    phrase = _phrase_for(group, rng)
    sentence, offset = _wrap_positive(phrase, rng, plan.is_followup)
    positives.setdefault(topic_of.get(spec.kind, "lungs"), []).append(
      (sentence, offset, phrase, spec.group)
    )
    labels[CHEXPERT_INDEX[FINDING_TO_CHEXPERT[spec.kind]]] = 1.0
    for name in _labels_in_phrase(phrase.text):
      labels[CHEXPERT_INDEX[name]] = 1.0
  impression_items = [
    _impression_item(group, rng, config, labels)
    for group in groups
    if group[0].kind != "support_device"
  ]
  device_items = [
    _impression_item(group, rng, config, labels)
    for group in groups
    if group[0].kind == "support_device"
  ]

  chosen: list[str] = []

  def choose(statements):
    """Pick one eligible statement that says something not said yet; apply its negations."""
    options = [
      o for o in _eligible(statements, present, labels) if not _redundant(o, chosen, labels)
    ]
    if not options:
      return None
    text, negated, _ = _pick(rng, options)
    for name in negated:
      labels[CHEXPERT_INDEX[name]] = 0.0
    chosen.append(text)
    return text

  redact = rng.random() < config.redaction_probability
  negate = config.negation_probability
  topics: dict[str, list[str]] = {"heart": [], "lungs": [], "pleura": [], "bones": []}
  if "cardiomegaly" not in present:
    if rng.random() < 0.95:
      topics["heart"].append(
        choose(_HEART_REDACTED if redact and rng.random() < 0.4 else _HEART_NORMAL)
      )
  elif rng.random() < 0.5:
    topics["heart"].append(choose(_MEDIASTINUM_NORMAL))
  if not present & _LUNG_KINDS and rng.random() < negate + 0.1:
    topics["lungs"].append(choose(_LUNGS_CLEAR))
  for _ in range(int(rng.integers(0, 3)) if rng.random() < negate else 0):
    topics["lungs"].append(choose(_LUNG_NEGATIVES))
  if rng.random() < negate:
    if not present & {"pleural_effusion", "pneumothorax"} and rng.random() < 0.7:
      topics["pleura"].append(choose(_PLEURA_BOTH))
    else:
      if "pneumothorax" not in present:
        topics["pleura"].append(choose(_PLEURA_PNEUMOTHORAX))
      if "pleural_effusion" not in present:
        topics["pleura"].append(choose(_PLEURA_EFFUSION_REDACTED if redact else _PLEURA_EFFUSION))
  if rng.random() < 0.55:
    topics["bones"].append(choose(_BONES))
  for name in topics:  # drop unavailable choices and repeats, keeping order
    seen = set()
    topics[name] = [t for t in topics[name] if t and not (t in seen or seen.add(t))]

  # Assemble the findings section: opening, device lines, then heart / lungs / pleura in a
  # varied order (positives lead their topic more often than not), bones last.
  pieces: list[tuple[str, tuple[int, _Phrase, int] | None]] = []
  if plan.is_followup or rng.random() < config.comparison_probability:
    pieces.append((_pick(rng, _COMPARISONS_REDACTED if redact else _COMPARISONS), None))
  if rng.random() < 0.12:
    pieces.append((_pick(rng, _VIEWS), None))
  devices_first = rng.random() < 0.6
  order = ["heart", "lungs", "pleura"]
  if rng.random() < 0.5:
    order = [order[i] for i in rng.permutation(3)]
  order = (["devices"] + order if devices_first else order + ["devices"]) + ["bones"]
  for topic in order:
    positive = [(s, (o, p, g)) for s, o, p, g in positives.get(topic, [])]
    negative = [(t, None) for t in topics.get(topic, [])]
    block = positive + negative if rng.random() < 0.75 else negative + positive
    pieces.extend(block)
  mentions: dict[int, Mention] = {}
  findings_parts: list[str] = []
  cursor = 0
  for sentence, where in pieces:
    if where is not None:
      offset, phrase, group = where
      start = cursor + offset
      end = start + len(phrase.text)
      words = sentence[offset : offset + len(phrase.text)]
      term_at = words.lower().rfind(phrase.term.lower())
      severity_at = words.lower().find(phrase.severity_word.lower()) if phrase.severity_word else -1
      mentions[group] = Mention(
        words=words,
        span=(start, end),
        term=words[term_at : term_at + len(phrase.term)],
        term_span=(start + term_at, start + term_at + len(phrase.term)),
        severity_word=words[severity_at : severity_at + len(phrase.severity_word)]
        if severity_at >= 0
        else "",
      )
    findings_parts.append(sentence)
    cursor += len(sentence) + 1
  findings_text = " ".join(findings_parts)

  if not pathology:
    impression_items = device_items + [_pick(rng, _NORMAL_IMPRESSIONS)]
  else:
    impression_items = impression_items + device_items
  if len(impression_items) > 1 and rng.random() < 0.5:
    impression_text = " ".join(f"{i + 1}. {item}" for i, item in enumerate(impression_items))
  else:
    impression_text = " ".join(impression_items)
  labels[CHEXPERT_INDEX["No Finding"]] = np.nan if pathology else 1.0
  text = f"{findings_text} {impression_text}" if findings_text else impression_text
  return Report(
    text=text,
    findings_text=findings_text,
    impression_text=impression_text,
    labels=labels,
    mentions=mentions,
  )


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _finding_records(plan: ExamplePlan, rendering: Rendering, report: Report) -> list[dict]:
  """Ground-truth records (one per finding spec) joining placement, box and report mention."""
  records = []
  for spec, box in zip(plan.findings, rendering.finding_boxes, strict=True):
    mention = report.mentions[spec.group]
    records.append(
      {
        "name": spec.kind,
        "finding_id": FINDING_INDEX[spec.kind],
        "region": spec.region,
        "region_id": region_id(spec.region),
        "box": [float(b) for b in box],
        "severity": int(spec.severity),
        "severity_name": SEVERITY_NAMES[spec.severity],
        "severity_word": mention.severity_word,
        "side": spec.side,
        "variant": spec.variant,
        "group": spec.group,
        "words": mention.words,
        "span": mention.span,
        "term": mention.term,
        "term_span": mention.term_span,
        "chexpert": FINDING_TO_CHEXPERT[spec.kind],
      }
    )
  return records


def example_from_plan(plan: ExamplePlan, config: PhantomConfig = PhantomConfig()) -> dict:
  """Render and write one planned study into an example dict (see `generate_example`)."""
  rendering = render_plan(plan, config.image_size)
  report = write_report(plan, config)
  return {
    "image": rendering.image,
    "text": report.text,
    "findings_text": report.findings_text,
    "impression_text": report.impression_text,
    "study_id": plan.study_id,
    "patient_id": plan.patient_id,
    "labels": report.labels,
    "findings": _finding_records(plan, rendering, report),
    "region_boxes": rendering.region_boxes,
    "index": plan.index,
    "split": plan.split,
  }


def generate_example(
  index: int, *, split: str = "train", seed: int = 0, config: PhantomConfig = PhantomConfig()
) -> dict:
  """Example `index` of a split, independent of every other example.

  Returns a dict with the contract keys `image` (uint8 [S, S, 1]), `text` (findings then
  impression), `study_id`, `patient_id`, `labels` (float32 [14], CheXpert order), plus
  `findings` (list of ground-truth dicts: name, finding_id, region, region_id, box [y0, x0, y1,
  x1], severity, severity_name, severity_word, side, variant, group, words, span, term, term_span,
  chexpert), `region_boxes` (float32 [29, 4]), `findings_text`, `impression_text`, `index`
  and `split`.
  """
  return example_from_plan(plan_example(index, split=split, seed=seed, config=config), config)


def findings_to_arrays(
  findings: Sequence[Mapping], max_findings: int = MAX_FINDINGS
) -> dict[str, np.ndarray]:
  """Fixed-size, padded ground truth of one example, for tf.data and evaluators.

  Returns `finding_id` int32 [M] (-1 padding), `finding_region` int32 [M] (-1),
  `finding_box` float32 [M, 4], `finding_severity` int32 [M], `finding_span` and
  `finding_term_span` int32 [M, 2] (character offsets into `text`; 0 padding) and
  `finding_valid` bool [M].
  """
  if len(findings) > max_findings:
    raise ValueError(f"{len(findings)} findings do not fit in {max_findings} padded rows")
  out = {
    "finding_id": np.full(max_findings, -1, np.int32),
    "finding_region": np.full(max_findings, -1, np.int32),
    "finding_box": np.zeros((max_findings, 4), np.float32),
    "finding_severity": np.zeros(max_findings, np.int32),
    "finding_span": np.zeros((max_findings, 2), np.int32),
    "finding_term_span": np.zeros((max_findings, 2), np.int32),
    "finding_valid": np.zeros(max_findings, bool),
  }
  for i, finding in enumerate(findings):
    out["finding_id"][i] = FINDING_INDEX[finding["name"]]
    out["finding_region"][i] = region_id(finding["region"])
    out["finding_box"][i] = finding["box"]
    out["finding_severity"][i] = finding["severity"]
    out["finding_span"][i] = finding["span"]
    out["finding_term_span"][i] = finding["term_span"]
    out["finding_valid"][i] = True
  return out


def generate_split(
  n: int,
  *,
  split: str = "train",
  seed: int = 0,
  config: PhantomConfig = PhantomConfig(),
  start: int = 0,
) -> dict:
  """Examples `start .. start + n - 1` of a split, stacked.

  Returns numpy arrays `image` uint8 [n, S, S, 1], `labels` float32 [n, 14], `region_boxes`
  float32 [n, 29, 4], `index` int32 [n], the padded `finding_*` arrays [n, MAX_FINDINGS, ...],
  and lists `text`, `study_id`, `patient_id`, `findings` (the ground-truth dicts).
  """
  examples = [generate_example(start + i, split=split, seed=seed, config=config) for i in range(n)]
  size = config.image_size
  out = {
    "image": np.stack([e["image"] for e in examples])
    if examples
    else np.zeros((0, size, size, 1), np.uint8),
    "labels": np.stack([e["labels"] for e in examples])
    if examples
    else np.zeros((0, 14), np.float32),
    "region_boxes": (
      np.stack([e["region_boxes"] for e in examples])
      if examples
      else np.zeros((0, len(CHEST_IMAGENOME_REGIONS), 4), np.float32)
    ),
    "index": np.arange(start, start + n, dtype=np.int32),
    "text": [e["text"] for e in examples],
    "study_id": [e["study_id"] for e in examples],
    "patient_id": [e["patient_id"] for e in examples],
    "findings": [e["findings"] for e in examples],
  }
  padded = [findings_to_arrays(e["findings"]) for e in examples]
  for key, empty in findings_to_arrays([]).items():
    out[key] = (
      np.stack([p[key] for p in padded]) if padded else np.zeros((0,) + empty.shape, empty.dtype)
    )
  return out


# Keys, dtypes and shapes (`S` stands for the image size) of each `as_tf_dataset` element.
TF_FEATURES: tuple[tuple[str, str, tuple], ...] = (
  ("image", "uint8", ("S", "S", 1)),
  ("text", "string", ()),
  ("study_id", "string", ()),
  ("patient_id", "string", ()),
  ("labels", "float32", (len(CHEXPERT_LABELS),)),
  ("region_boxes", "float32", (len(CHEST_IMAGENOME_REGIONS), 4)),
  ("index", "int32", ()),
  ("finding_id", "int32", (MAX_FINDINGS,)),
  ("finding_region", "int32", (MAX_FINDINGS,)),
  ("finding_box", "float32", (MAX_FINDINGS, 4)),
  ("finding_severity", "int32", (MAX_FINDINGS,)),
  ("finding_span", "int32", (MAX_FINDINGS, 2)),
  ("finding_term_span", "int32", (MAX_FINDINGS, 2)),
  ("finding_valid", "bool", (MAX_FINDINGS,)),
)


def example_to_features(example: Mapping) -> dict[str, np.ndarray]:
  """The flat, fixed-shape numpy features of one example (the `as_tf_dataset` element)."""
  features = {
    "image": example["image"],
    "text": np.bytes_(example["text"].encode("utf-8")),
    "study_id": np.bytes_(example["study_id"].encode("utf-8")),
    "patient_id": np.bytes_(example["patient_id"].encode("utf-8")),
    "labels": example["labels"].astype(np.float32),
    "region_boxes": example["region_boxes"].astype(np.float32),
    "index": np.int32(example["index"]),
  }
  features.update(findings_to_arrays(example["findings"]))
  return features


def as_tf_dataset(
  n: int,
  *,
  split: str = "train",
  seed: int = 0,
  config: PhantomConfig = PhantomConfig(),
  num_parallel_calls: int | None = None,
):
  """A deterministic `tf.data.Dataset` of `n` contract examples (keys in `TF_FEATURES`).

  Elements are generated lazily (`Dataset.range(n).map` over `tf.numpy_function`), in index
  order even when mapped in parallel, and equal `example_to_features(generate_example(i, ...))`.
  """
  import tensorflow as tf  # deferred: the generator itself needs only numpy

  keys = [key for key, _, _ in TF_FEATURES]
  dtypes = [tf.as_dtype(dtype) for _, dtype, _ in TF_FEATURES]
  size = config.image_size
  shapes = [tuple(size if d == "S" else d for d in shape) for _, _, shape in TF_FEATURES]

  def make(index):
    """The flat features of one example, as a tuple in `TF_FEATURES` order."""
    features = example_to_features(
      generate_example(int(index), split=split, seed=seed, config=config)
    )
    return tuple(features[key] for key in keys)

  def to_dict(index):
    """Graph-side wrapper: call `make` and restore the static shapes."""
    values = tf.numpy_function(make, [index], dtypes, stateful=False)
    out = {}
    for key, value, shape in zip(keys, values, shapes, strict=True):
      value.set_shape(shape)
      out[key] = value
    return out

  parallel = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
  return tf.data.Dataset.range(n).map(to_dict, num_parallel_calls=parallel, deterministic=True)


# ----------------------------------------------------------------------------------------------
# A look for humans: python -m data_pipeline.phantoms --out DIR --n 8
# ----------------------------------------------------------------------------------------------


def _draw_boxes(image: np.ndarray, findings: Sequence[Mapping]):
  """An RGB copy of `image` with each finding's box and label drawn (a PIL image)."""
  from PIL import Image, ImageDraw

  rgb = Image.fromarray(image[..., 0]).convert("RGB")
  draw = ImageDraw.Draw(rgb)
  size = image.shape[0]
  colours = (
    (255, 64, 64),
    (64, 200, 64),
    (80, 140, 255),
    (255, 200, 0),
    (255, 0, 255),
    (0, 220, 220),
  )
  for i, finding in enumerate(findings):
    y0, x0, y1, x1 = (b * size for b in finding["box"])
    colour = colours[i % len(colours)]
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour)
    draw.text((x0 + 2, max(y0 - 11, 0)), f"{finding['name']} ({finding['region']})", fill=colour)
  return rgb


def write_preview(
  out_dir: str,
  n: int = 8,
  *,
  split: str = "train",
  seed: int = 0,
  config: PhantomConfig = PhantomConfig(),
  start: int = 0,
) -> list[str]:
  """Write `NNNNN.png` (the image), `NNNNN_boxes.png` (ground truth drawn) and `NNNNN.txt`.

  The text file holds the ids, the report, the labels and the ground-truth findings. Returns the
  written image paths.
  """
  from PIL import Image

  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for index in range(start, start + n):
    example = generate_example(index, split=split, seed=seed, config=config)
    stem = os.path.join(out_dir, f"{index:05d}")
    Image.fromarray(example["image"][..., 0]).save(stem + ".png")
    _draw_boxes(example["image"], example["findings"]).save(stem + "_boxes.png")
    labels = ", ".join(
      f"{name}={value:g}"
      for name, value in zip(CHEXPERT_LABELS, example["labels"], strict=True)
      if not np.isnan(value)
    )
    lines = [
      f"study_id: {example['study_id']}",
      f"patient_id: {example['patient_id']}",
      f"FINDINGS: {example['findings_text']}",
      f"IMPRESSION: {example['impression_text']}",
      f"labels: {labels}",
      "ground truth:",
    ]
    for finding in example["findings"]:
      box = ", ".join(f"{b:.3f}" for b in finding["box"])
      lines.append(
        f"  - {finding['name']} | {finding['region']} | box [{box}] | "
        f'{finding["severity_name"]} | "{finding["words"]}"'
      )
    with open(stem + ".txt", "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
    paths.append(stem + ".png")
  return paths


def main(argv: Sequence[str] | None = None) -> None:
  """Command line: write a few phantoms, their ground truth drawn, and their reports to a folder."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder to write PNGs and reports into")
  parser.add_argument("--n", type=int, default=8, help="number of examples")
  parser.add_argument("--start", type=int, default=0, help="index of the first example")
  parser.add_argument("--split", default="train")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--image-size", type=int, default=256)
  args = parser.parse_args(argv)
  config = PhantomConfig(image_size=args.image_size)
  paths = write_preview(
    args.out, args.n, split=args.split, seed=args.seed, config=config, start=args.start
  )
  print(f"wrote {len(paths)} examples to {args.out}")


if __name__ == "__main__":
  main()
