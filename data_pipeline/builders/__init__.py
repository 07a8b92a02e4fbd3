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

Shared by the builders, one job per module:

* `validation`: the skip reasons, `RecordRejected`, strict mode (`StrictValidationError`);
* `accounting`: `SkipLedger`, the kept / skipped / excluded / noted counts per split;
* `base`: `ImageBuilderConfig` and `ValidatingBuilder`, the base of every builder;
* `image_io`: image decoding, grayscale conversion, resizing and checks;
* `report_text`: report decoding, whitespace cleaning, the empty-report check;
* `splits`: deterministic patient-hash splits (`assign_split`);
* `sources`: locating and reading raw source files, CSV rows and cells (CheXpert labels).

Neither they nor the builder packages are imported here (importing a builder registers its
dataset name with TFDS and imports TensorFlow); use `builder_class`.
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
