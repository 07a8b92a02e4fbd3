"""The phantom's vocabularies (finding kinds, severities, devices) and its knobs (`PhantomConfig`).

Every other module of the package names findings with these tuples; the CheXpert observation and
Chest ImaGenome region names they map onto live in `data_pipeline.names`.
"""

from __future__ import annotations

import dataclasses

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

# Support devices the phantom can draw (the `variant` of a `support_device` finding).
DEVICE_VARIANTS = ("endotracheal tube", "central venous catheter", "pacemaker")


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


# The default knobs; a frozen dataclass, so one shared instance is a safe default argument.
DEFAULT_CONFIG = PhantomConfig()
