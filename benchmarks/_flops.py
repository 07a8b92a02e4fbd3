"""Model FLOPs of a JAX function, counted on its jaxpr: the matmuls and convolutions it runs.

The MFU convention (as in PaLM's appendix): only `dot_general` and `conv_general_dilated` count,
2 FLOPs per multiply-add, forward and backward alike (a backward pass is more of the same two
primitives in the jaxpr of a gradient). Counting the traced program rather than asking XLA keeps
the figure the same on every backend: XLA's GPU cost analysis counts a convolution that became a
cuDNN call as 0 FLOPs. Loops multiply their body by the trip count, `shard_map` by the shards;
`cond` counts its most expensive branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
from jax.extend import core as jax_core

COUNTED = ("dot_general", "conv_general_dilated")


def _dot_general_flops(eqn) -> int:
  lhs = eqn.invars[0].aval
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  contract = math.prod(lhs.shape[d] for d in lhs_contract)
  return 2 * math.prod(eqn.outvars[0].aval.shape) * contract


def _conv_flops(eqn) -> int:
  # Every output element sums over the kernel's spatial window and its input-feature dimension
  # (which is already per feature group); the same holds for the convolutions of the backward pass.
  # A dilated input (the input gradient of a strided convolution) is mostly inserted zeros: only
  # one tap in prod(lhs_dilation) is a multiply-add of the model.
  rhs = eqn.invars[1].aval
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
  window = math.prod(rhs.shape[d] for d in rhs_spec[2:]) * rhs.shape[rhs_spec[1]]
  dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
  return 2 * math.prod(eqn.outvars[0].aval.shape) * window // dilation


def _sub_jaxprs(value: Any) -> Iterable[jax_core.Jaxpr]:
  if isinstance(value, jax_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _sub_jaxprs(item)


def jaxpr_flops(jaxpr: jax_core.Jaxpr) -> int:
  """Matmul and convolution FLOPs of one run of `jaxpr`, sub-programs included."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_flops(eqn)
      continue
    if name == "conv_general_dilated":
      total += _conv_flops(eqn)
      continue
    if name == "while":
      raise ValueError(
        "a while loop's trip count is not static: count its body separately "
        "(a fori_loop with static bounds is a scan, which is counted)"
      )
    if name == "cond":
      total += max(jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
      continue
    inner = sum(jaxpr_flops(sub) for value in eqn.params.values() for sub in _sub_jaxprs(value))
    if name == "scan":
      inner *= eqn.params["length"]
    elif name == "shard_map":  # the body sees one shard: count every device's
      mesh = eqn.params["mesh"]
      manual = eqn.params.get("newly_manual_axes") or eqn.params.get("manual_axes") or mesh.shape
      inner *= math.prod(mesh.shape[axis] for axis in manual)
    total += inner
  return total


def model_flops(fn: Callable[..., Any], *args: Any) -> int:
  """Matmul and convolution FLOPs of one call of `fn(*args)`; `args` may be
  `jax.ShapeDtypeStruct`s, nothing is run. The count is over all devices (a `shard_map` body
  counts once per shard)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
