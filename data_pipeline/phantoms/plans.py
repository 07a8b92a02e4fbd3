"""Plans: everything random about an example, drawn before anything is rendered or written.

`plan_example` draws the anatomy, pose, exposure and findings of one study into an `ExamplePlan`;
rendering (`render_plan`) and report writing (`write_report`) are pure functions of the plan, so
the same patient can be drawn with and without a finding.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.phantoms.config import DEFAULT_CONFIG, PhantomConfig
from data_pipeline.phantoms.geometry import ChestGeometry, Pose, sample_geometry, sample_pose
from data_pipeline.phantoms.placement import FindingSpec, sample_findings
from data_pipeline.phantoms.streams import stream_rng


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
  index: int, *, split: str = "train", seed: int = 0, config: PhantomConfig = DEFAULT_CONFIG
) -> ExamplePlan:
  """Draw the anatomy, pose, exposure and findings of example `index` of a split.

  Studies `2k` and `2k+1` share one patient (same anatomy, new pose and findings) with
  probability `config.same_patient_probability`; the odd one is then the follow-up study.
  """
  index = int(index)
  pair = index // 2
  prefix = f"syn-{split}-s{seed}"
  shared = stream_rng(seed, split, pair, "pairing", 1).random() < config.same_patient_probability
  if shared:
    patient_id = f"{prefix}-p{pair:06d}"
    anatomy_rng = stream_rng(seed, split, pair, "anatomy", 1)
    is_followup = index % 2 == 1
  else:
    patient_id = f"{prefix}-p{pair:06d}-{index % 2}"
    anatomy_rng = stream_rng(seed, split, index, "anatomy")
    is_followup = False
  geometry = sample_geometry(anatomy_rng)
  pose_rng = stream_rng(seed, split, index, "pose")
  pose = sample_pose(
    pose_rng,
    max_shift=config.max_shift,
    max_rotation_deg=config.max_rotation_deg,
    scale_range=config.scale_range,
  )
  style = _sample_style(pose_rng, config)
  findings = sample_findings(stream_rng(seed, split, index, "findings"), geometry, config)
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
