"""The whole chain on real data: the covid_cxr TFDS builder over ../shared/data/covid_chestxray,
then the trainer reading the built dataset (source=tfds) for a few steps and evaluating retrieval on
its held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from data_pipeline.builders.covid_cxr.covid_cxr_dataset_builder import Builder, CovidCxrConfig
from jimte import train
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
      "data.tfds_data_dir": str(builder.data_dir),
      "data.eval_split": "test",
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
