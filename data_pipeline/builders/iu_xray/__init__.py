"""TFDS builder `iu_xray`: Indiana University / Open-i chest X-rays with reports."""

from .iu_xray_dataset_builder import Builder, IuXrayConfig
from .openi import canonical_image_key, choose_views, parse_report

__all__ = ["Builder", "IuXrayConfig", "canonical_image_key", "choose_views", "parse_report"]
