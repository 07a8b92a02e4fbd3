"""FLOPs per step from XLA's cost analysis, and the peak used for the MFU estimate."""

import jax
import jax.numpy as jnp
import pytest

from jimte import perf


def test_compiled_flops_of_a_matmul():
  f = jax.jit(lambda a, b: a @ b)
  compiled = f.lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
  assert perf.compiled_flops(compiled) == pytest.approx(2 * 64 * 32 * 16, rel=0.05)


def test_device_peak():
  assert perf.device_peak_flops(123.0) == 123.0
  assert perf.device_peak_flops() == 150e9  # this CPU's measured matmul peak
