"""TFDS dataset builders of jimte, one package per dataset.

Each `data_pipeline/builders/<name>/<name>_dataset_builder.py` defines `class Builder` (a
`tfds.core.GeneratorBasedBuilder`), so the TFDS CLI finds it by folder::

    tfds build data_pipeline/builders/<name> --manual_dir DIR --data_dir OUT [--config NAME]

and the result is read with `tfds.builder_from_directory(OUT/<name>/<config>/<version>)`.

===============  =======================================================================
`covid_cxr`    COVID-19 image data collection: X-rays + clinical notes (manual_dir)
`iu_xray`      Indiana University / Open-i: frontal + lateral images + reports
                 (Open-i download or manual_dir; configs `default` and `r2gen`)
`mimic_cxr`    MIMIC-CXR-JPG 2.x: frontal images, findings + impression, CheXpert labels
                 (manual_dir, credentialed)
`synthetic_cxr` procedurally generated phantoms (`data_pipeline.phantoms`); no input
===============  =======================================================================

Record validation, image normalisation, skip accounting and strict mode are shared, see
`data_pipeline.builders.common`. Builder packages are not imported here (importing one
registers its dataset name with TFDS and imports TensorFlow); use `builder_class`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

BUILDER_NAMES: tuple[str, ...] = ("covid_cxr", "iu_xray", "mimic_cxr", "synthetic_cxr")


def builder_dir(name: str) -> Path:
  """Folder of builder `name` (the argument `tfds build` takes)."""
  if name not in BUILDER_NAMES:
    raise ValueError(f"Unknown builder {name!r}; known: {BUILDER_NAMES}")
  return Path(__file__).resolve().parent / name


def builder_class(name: str):
  """Imports and returns `data_pipeline.builders.<name>.Builder`."""
  if name not in BUILDER_NAMES:
    raise ValueError(f"Unknown builder {name!r}; known: {BUILDER_NAMES}")
  return importlib.import_module(f"{__name__}.{name}").Builder


__all__ = ["BUILDER_NAMES", "builder_class", "builder_dir"]
