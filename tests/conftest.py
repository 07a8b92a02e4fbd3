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
