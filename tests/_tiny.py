"""The tiny variant of the default config (configs/default.py:tiny) with per-test overrides."""

from configs import default as default_config


def tiny_config(**overrides):
  """`default.get_config('tiny')` with dotted-key overrides, e.g. tiny_config(**{'loss.mixture':
  False})."""
  return apply_overrides(default_config.get_config("tiny"), **overrides)


def apply_overrides(c, **overrides):
  """Sets dotted keys of config `c` in place (e.g. `**{'loss.mixture': False}`); returns it."""
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def param_leaves(state):
  """The parameters of a train state as host numpy arrays, in tree order (to compare runs)."""
  import jax
  import numpy as np

  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]
