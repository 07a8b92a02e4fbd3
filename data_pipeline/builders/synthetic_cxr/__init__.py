"""TFDS builder `synthetic_cxr`: the procedural phantoms of data_pipeline.phantoms."""

from .synthetic_cxr_dataset_builder import Builder, SyntheticCxrConfig

__all__ = ["Builder", "SyntheticCxrConfig"]
