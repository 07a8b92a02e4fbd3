"""The Beam build of `mimic_cxr` (DirectRunner, two worker processes) on a generated MIMIC-CXR-JPG
tree: the counts the tree calls for, and the same examples (keys and every feature) as the
single-process build."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline.builders.mimic_cxr import Builder, MimicCxrConfig
from data_pipeline.builders.mimic_cxr.mimic_cxr_dataset_builder import PLAN_DIR
from tests._builder_helpers import prepare, read_split, record_accounting
from tests._mimic_tree import write_mimic_tree

beam = pytest.importorskip(
  "apache_beam",
  reason="apache_beam is not installed, so the Beam build of mimic_cxr is not tested "
  "(pip install apache-beam, or the project's `cli` extra)",
)

BEAM_FLAGS = [
  "--runner=DirectRunner",
  "--direct_num_workers=2",
  "--direct_running_mode=multi_processing",
]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
  """(tree, single-process builder, Beam builder), both built from one generated tree."""
  base = tmp_path_factory.mktemp("mimic_beam")
  tree = write_mimic_tree(base / "manual")
  config = MimicCxrConfig(name="tree_64", max_side=64)
  single = prepare(Builder(data_dir=base / "single", config=config), base / "manual")
  beam_builder = Builder(data_dir=base / "beam", config=config)
  options = beam.options.pipeline_options.PipelineOptions(flags=BEAM_FLAGS)
  download_config = tfds.download.DownloadConfig(
    manual_dir=str(base / "manual"), beam_options=options
  )
  beam_builder.download_and_prepare(download_config=download_config)
  return tree, single, beam_builder


def test_beam_build_counts_what_the_tree_holds(builds):
  tree, single, beam_builder = builds
  for builder in (single, beam_builder):
    counts = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert counts == tree.counts()
    assert record_accounting(builder) == tree.accounting
  assert set(tree.counts()) == {"train", "validation", "test"}
  assert not (beam_builder.data_path / PLAN_DIR).exists()  # the plan is not left in the dataset


def test_beam_and_single_process_builds_yield_the_same_examples(builds):
  tree, single, beam_builder = builds
  for split, kept in tree.kept.items():
    by_key = [
      {ex["dicom_id"].decode(): ex for ex in read_split(builder, split)}
      for builder in (single, beam_builder)
    ]
    assert set(by_key[0]) == set(by_key[1]) == kept
    for key, expected in by_key[0].items():
      actual = by_key[1][key]
      assert set(actual) == set(expected)
      for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=f"{split}/{key}/{name}")
