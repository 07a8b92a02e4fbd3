"""TFDS builder `covid_cxr`: COVID-19 image data collection X-rays + clinical notes."""

from .covid_cxr_dataset_builder import Builder, CovidCxrConfig

__all__ = ["Builder", "CovidCxrConfig"]
