"""Tests of the `synthetic_cxr` builder against the phantom generator."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.builders.synthetic_cxr import Builder as SyntheticBuilder
from data_pipeline.builders.synthetic_cxr import SyntheticCxrConfig
from data_pipeline.names import CHEXPERT_OBSERVATIONS
from tests._builder_helpers import prepare, read_split


def test_synthetic_builder_matches_the_generator(tmp_path):
  from data_pipeline import phantoms

  config = SyntheticCxrConfig(
    name="syn_t", n_train=6, n_validation=3, n_test=0, image_size=64, seed=2
  )
  builder = prepare(SyntheticBuilder(data_dir=tmp_path, config=config), None)
  assert {n: s.num_examples for n, s in builder.info.splits.items()} == {
    "train": 6,
    "validation": 3,
  }
  assert builder.info.metadata["empty_splits"] == ["test"]
  assert builder.info.metadata["chexpert_labels"] == list(CHEXPERT_OBSERVATIONS)
  patients = {}
  for split in ("train", "validation"):
    examples = sorted(read_split(builder, split), key=lambda e: int(e["index"]))
    assert [int(e["index"]) for e in examples] == list(range(config.split_sizes()[split]))
    patients[split] = {e["patient_id"] for e in examples}
    for ex in examples[:3]:
      reference = phantoms.generate_example(
        int(ex["index"]), split=split, seed=2, config=config.phantom_config()
      )
      assert ex["text"].decode() == reference["text"]  # verbatim: spans index it
      assert ex["impression_text"].decode() == reference["impression_text"]
      for key, value in phantoms.example_to_features(reference).items():
        value = np.asarray(value)
        if value.dtype.kind == "S":
          assert ex[key] == value, key
        else:
          np.testing.assert_array_equal(ex[key], value, err_msg=key)
  assert not patients["train"] & patients["validation"]
  assert builder.info.features["image"].shape == (64, 64, 1)


def test_synthetic_config_validation():
  with pytest.raises(ValueError, match="image_size"):
    SyntheticCxrConfig(name="x", phantom={"image_size": 64})
  with pytest.raises(TypeError):
    SyntheticCxrConfig(name="x", phantom={"no_such_knob": 1})
  with pytest.raises(ValueError):
    SyntheticCxrConfig(name="x", n_train=-1)
  weights = SyntheticCxrConfig(name="x", phantom={"finding_weights": [["nodule", 1.0]]})
  assert weights.phantom_config().finding_weights == (("nodule", 1.0),)
