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
