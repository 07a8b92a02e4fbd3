"""TFDS builder for the built-in synthetic chest X-ray set (`data_pipeline.phantoms`).

Nothing is read or downloaded: example `i` of split `s` is
`phantoms.generate_example(i, split=s, seed=config.seed, config=PhantomConfig(...))`, a pure
function of `(seed, split, index)`, so a build is reproducible bit for bit and the splits are
patient-disjoint by construction (phantom patient ids carry the split name).

Features: the contract keys (`image` uint8 [S, S, 1], `text` = findings then impression,
`study_id`, `patient_id`, `labels` float32 [14] in CheXpert order) plus the phantom's ground
truth in fixed-size padded form (`phantoms.findings_to_arrays`: `finding_id`,
`finding_region`, `finding_box` [y0, x0, y1, x1] in [0, 1], `finding_severity`,
`finding_span`/`finding_term_span` (character offsets into `text`), `finding_valid`), the
29 anatomical `region_boxes`, `index`, and the `findings_text` / `impression_text` halves
of the report. `builder.info.metadata` names the finding kinds, CheXpert observations and
regions that the integer ids index.

Configs (`n_train` / `n_validation` / `n_test` examples at `image_size` px):

* `default`: 3000 / 300 / 300 at 128 px (the data of `configs/default.py`);
* `small`: 200 / 50 / 50 at 64 px (smoke tests);
* `large`: 20000 / 2000 / 2000 at 256 px.

Custom sizes from the CLI, e.g.::

    tfds build data_pipeline/builders/synthetic_cxr --data_dir OUT \\
        --config '{"name": "syn512", "n_train": 4096, "n_validation": 512, "n_test": 512,
                   "image_size": 512, "seed": 1, "phantom": {"abnormal_probability": 0.8}}'

`phantom` holds extra `data_pipeline.phantoms.PhantomConfig` fields. Every generated
example is still checked against the contract (non-empty text, uint8 [S, S, 1] image, unique
study id) with the shared skip accounting of `data_pipeline.builders.accounting`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

try:
  from data_pipeline import names, phantoms
  from data_pipeline.builders import base, report_text, validation
except ModuleNotFoundError:  # `tfds build <path>` run without `pip install -e .`
  sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
  from data_pipeline import names, phantoms
  from data_pipeline.builders import base, report_text, validation

SPLITS = ("train", "validation", "test")
INVALID_IMAGE = "invalid generated image"

_DESCRIPTION = """\
Procedural frontal chest X-ray phantoms with radiology-style reports and exact ground truth
(finding kind, anatomical region, box, severity, report words), from data_pipeline.phantoms.
"""


def _tuplify(value: Any) -> Any:
  """JSON lists -> tuples, recursively (PhantomConfig is a frozen, hashable dataclass)."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuplify(v) for v in value)
  return value


@dataclasses.dataclass(eq=False)
class SyntheticCxrConfig(tfds.core.BuilderConfig):
  """Config of `Builder`.

  Attributes:
    n_train, n_validation, n_test: examples per split (0 leaves the split out).
    image_size: side of the square phantoms in pixels (>= 32).
    seed: generator seed; with the split name and the index it fixes every example.
    phantom: extra `PhantomConfig` fields (e.g. `{"abnormal_probability": 0.8}`).
  """

  n_train: int = 3000
  n_validation: int = 300
  n_test: int = 300
  image_size: int = 128
  seed: int = 0
  phantom: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for name in ("n_train", "n_validation", "n_test", "seed"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if "image_size" in self.phantom:
      raise ValueError("set image_size as a config field, not inside `phantom`")
    self.phantom = {str(k): _tuplify(v) for k, v in dict(self.phantom).items()}
    self.phantom_config()  # Validates the phantom fields now, not mid-build.

  def phantom_config(self) -> phantoms.PhantomConfig:
    return phantoms.PhantomConfig(image_size=self.image_size, **self.phantom)

  def split_sizes(self) -> dict[str, int]:
    return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}


class Builder(base.ValidatingBuilder):
  """Synthetic chest X-ray phantoms with reports and region-level ground truth."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    SyntheticCxrConfig(name="default", description="3000/300/300 phantoms at 128 px."),
    SyntheticCxrConfig(
      name="small",
      n_train=200,
      n_validation=50,
      n_test=50,
      image_size=64,
      description="200/50/50 phantoms at 64 px.",
    ),
    SyntheticCxrConfig(
      name="large",
      n_train=20000,
      n_validation=2000,
      n_test=2000,
      image_size=256,
      description="20000/2000/2000 phantoms at 256 px.",
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    features: dict[str, Any] = {}
    for key, dtype, shape in phantoms.TF_FEATURES:
      if key == "image":
        features[key] = tfds.features.Image(
          shape=(size, size, 1), dtype=np.uint8, encoding_format="png"
        )
      elif dtype == "string":
        features[key] = tfds.features.Text()
      else:
        features[key] = tfds.features.Tensor(shape=tuple(shape), dtype=np.dtype(dtype))
    features["findings_text"] = tfds.features.Text(doc="FINDINGS half of the report")
    features["impression_text"] = tfds.features.Text(doc="IMPRESSION half of the report")
    metadata = tfds.core.MetadataDict(
      finding_names=list(phantoms.FINDING_NAMES),
      chexpert_labels=list(names.CHEXPERT_OBSERVATIONS),
      regions=list(names.CHEST_IMAGENOME_REGIONS),
      severity_names=list(phantoms.SEVERITY_NAMES),
    )
    return tfds.core.DatasetInfo(
      builder=self,
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(features),
      metadata=metadata,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    self._new_ledger()
    config = self.builder_config
    planned = {name: list(range(n)) for name, n in config.split_sizes().items()}
    return {
      name: self._generate_examples(split=name, indices=indices)
      for name, indices in self._non_empty_splits(planned).items()
    }

  def _generate_examples(self, split: str, indices: list[int]) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    phantom_config = config.phantom_config()
    size = config.image_size
    ledger = self.ledger
    seen: set[str] = set()
    try:
      for index in indices:
        example = phantoms.generate_example(
          index, split=split, seed=config.seed, config=phantom_config
        )
        key = example["study_id"]
        try:
          # Validation only: `text` is stored verbatim, the finding spans index it.
          report_text.require_text(example["text"])
          image = np.asarray(example["image"])
          if image.dtype != np.uint8 or image.shape != (size, size, 1):
            raise validation.RecordRejected(
              INVALID_IMAGE, f"{image.dtype} {image.shape}, expected uint8 {(size, size, 1)}"
            )
          if key in seen:
            raise validation.RecordRejected(validation.DUPLICATE_ID, f"index {index}")
        except validation.RecordRejected as e:
          ledger.reject(split, e.reason, key, detail=e.detail)
          continue
        seen.add(key)
        features = phantoms.example_to_features(example)
        features["text"] = example["text"]
        features["study_id"] = example["study_id"]
        features["patient_id"] = example["patient_id"]
        features["findings_text"] = example["findings_text"]
        features["impression_text"] = example["impression_text"]
        ledger.accept(split)
        yield key, features
    finally:
      self._finish_split(split)
    self._check_split_nonempty(split)
