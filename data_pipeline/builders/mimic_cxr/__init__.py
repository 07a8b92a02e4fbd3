"""TFDS builder `mimic_cxr`: MIMIC-CXR-JPG frontal images, report sections, CheXpert labels."""

from .mimic_cxr_dataset_builder import (
  Builder,
  MimicCxrConfig,
  extract_sections,
  findings_and_impression,
)

__all__ = ["Builder", "MimicCxrConfig", "extract_sections", "findings_and_impression"]
