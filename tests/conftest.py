"""Fixtures shared by the test modules."""

import jax
import pytest


@pytest.fixture
def true_float32_matmuls():
  """Full-precision float32 products: these tests check the math, and GPUs default to TF32."""
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture
def x64():
  """Run one test with 64-bit floats, restoring the previous setting afterwards."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def tokenizer():
  """The toy SentencePiece model of the input-pipeline tests (tests/_input_data.py); a module may
  define its own `tokenizer` fixture instead (tests/test_tokenizer.py does)."""
  from tests._input_data import toy_tokenizer

  return toy_tokenizer()


@pytest.fixture(scope="module")
def source():
  """The toy in-memory source of the input-pipeline tests (tests/_input_data.py)."""
  from tests._input_data import toy_source

  return toy_source()


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """A work dir written by `train.train_and_evaluate` on the tiny config (16 synthetic pairs, 4
  steps): config.json, tokenizer/, checkpoints/4. Shared by the inference, export, retrieval and
  classification tests; treat it as read-only."""
  from jimte import train
  from tests._tiny import tiny_config

  workdir = tmp_path_factory.mktemp("trained_workdir")
  c = tiny_config(
    **{
      "data.num_train": 16,
      "data.num_eval": 8,
      "evals.retrieval.pool_size": 8,
      "evals.retrieval.scores": ("global",),
      "total_steps": 4,
      "checkpoint_every_steps": 1000,
    }
  )
  train.train_and_evaluate(c, str(workdir), progress=False)
  return str(workdir)
