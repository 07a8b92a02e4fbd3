"""The whole chain on real data: the covid_cxr TFDS builder over ../shared/data/covid_chestxray,
then the trainer reading the built dataset (source=tfds) for a few steps and evaluating retrieval on
its held-out split. Also how `config.data.tfds_*` find a built dataset, on a tiny synthetic_cxr
build: TFDS's layout under `tfds_data_dir` (or `$TFDS_DATA_DIR`), as
`configs/joimternet_paper.py:tfds_name=...` documents."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from configs import joimternet_paper
from data_pipeline.builders.covid_cxr.covid_cxr_dataset_builder import Builder, CovidCxrConfig
from data_pipeline.builders.synthetic_cxr import Builder as SyntheticBuilder
from data_pipeline.builders.synthetic_cxr import SyntheticCxrConfig
from data_pipeline.input import TfdsSource
from jimte import data, train
from tests._tiny import tiny_config

COVID_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid_chestxray"


@pytest.mark.skipif(not COVID_DIR.is_dir(), reason="shared covid_chestxray data absent")
def test_train_and_evaluate_on_built_covid_cxr(tmp_path):
  builder = Builder(
    data_dir=str(tmp_path / "tfds"), config=CovidCxrConfig(name="frontal_64", max_side=64)
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(COVID_DIR))
  )
  num_test = builder.info.splits["test"].num_examples
  assert builder.info.splits["train"].num_examples > 100 and num_test > 20

  c = tiny_config(
    **{
      "data.source": "tfds",
      "data.tfds_name": "covid_cxr",
      "data.tfds_config": "frontal_64",
      "data.tfds_data_dir": str(tmp_path / "tfds"),  # read from TFDS's layout below it
      "evals.retrieval.split": "test",
      "evals.attention_png.split": "test",
      "total_steps": 4,
    }
  )
  metrics, state = train.train_and_evaluate(c, str(tmp_path / "work"), progress=False)
  assert int(state.step) == 4
  final = json.loads((tmp_path / "work" / "final_metrics.json").read_text())
  assert final["eval/retrieval/num_pairs"] == num_test  # every held-out study scored exactly once
  assert final["eval/retrieval/chance_R@10"] == pytest.approx(10 / num_test)
  assert (tmp_path / "work" / "tokenizer" / "spm.model").exists()
  assert (tmp_path / "work" / "attention.png").exists()


def test_tfds_name_config_and_data_dir_find_the_built_dataset(tmp_path, monkeypatch):
  root = tmp_path / "tfds"
  config = SyntheticCxrConfig(name="tiny", n_train=6, n_validation=0, n_test=3, image_size=32)
  builder = SyntheticBuilder(data_dir=str(root), config=config)
  builder.download_and_prepare()
  built = Path(builder.data_dir)
  assert built == root / "synthetic_cxr" / "tiny" / "1.0.0"
  shutil.copytree(built, built.parent / "0.9.0")  # an older version: the latest one is read
  (built.parent / "2.0.0").mkdir()  # not a built version (no dataset_info.json): skipped

  c = joimternet_paper.get_config(f"tfds_name=synthetic_cxr,tfds_config=tiny,tfds_data_dir={root}")
  assert data.tfds_dataset_dir(c.data) == str(built)
  assert TfdsSource(data.tfds_dataset_dir(c.data), "train").num_examples == 6
  # As documented (`:tfds_name=NAME`): the data dir defaults to TFDS's own, $TFDS_DATA_DIR.
  monkeypatch.setenv("TFDS_DATA_DIR", str(root))
  c = joimternet_paper.get_config("tfds_name=synthetic_cxr,tfds_config=tiny")
  assert data.tfds_dataset_dir(c.data) == str(built)
  # A data dir that is itself a dataset directory is read as it is.
  c.data.tfds_data_dir, c.data.tfds_name = str(built), ""
  assert data.tfds_dataset_dir(c.data) == str(built)


def test_a_missing_tfds_dataset_names_the_path_and_the_build_command(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  c = joimternet_paper.get_config("tfds_name=iu_xray")  # the builder's default config: 'default'
  expected = f"{tmp_path}/iu_xray/default/<version>"
  with pytest.raises(FileNotFoundError, match=re.escape(expected)) as error:
    data.tfds_dataset_dir(c.data)
  command = f"tfds build data_pipeline/builders/iu_xray --data_dir {tmp_path} --config default"
  assert command in str(error.value)
