"""Dtype, norm and cosine shared by the region-word kernel, the terms and the objective."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Lower bound on the product of norms in every cosine (as in the original code).
COSINE_EPS = 1e-8


def stats_dtype(*dtypes) -> jnp.dtype:
  """Dtype of softmaxes, cosines, scores and log-sum-exps: float32, float64 for float64 inputs."""
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def safe_norm(x: Array, axis: int = -1) -> Array:
  """Euclidean norm along `axis` whose gradient at a zero vector is 0 rather than NaN."""
  sq_norm = jnp.sum(x * x, axis=axis)
  positive = sq_norm > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq_norm, 1.0)), 0.0)


def cosine_matrix(x: Array, y: Array) -> Array:
  """All-pairs cosine [A, B] of x [A, D] and y [B, D], with `max(|x||y|, 1e-8)` below."""
  dtype = stats_dtype(x.dtype, y.dtype)
  x = x.astype(dtype)
  y = y.astype(dtype)
  dots = x @ y.T
  norm_products = safe_norm(x)[:, None] * safe_norm(y)[None, :]
  return dots / jnp.maximum(norm_products, COSINE_EPS)
