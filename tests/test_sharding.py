"""jimte.sharding: the mesh from the config, the batch's axes, and the parameter sharding rules (in
this process; the rules on 8 simulated devices are checked by tests/test_parallel.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from configs import common
from jimte import sharding

# --------------------------------------------------------------------------------------------------
# Mesh.
# --------------------------------------------------------------------------------------------------


def test_resolve_axis_sizes_fills_the_free_axis():
  assert sharding.resolve_axis_sizes((("data", -1), ("fsdp", 2)), 8) == [("data", 4), ("fsdp", 2)]
  assert sharding.resolve_axis_sizes({"data": 2, "fsdp": -1, "model": 2}, 8) == [
    ("data", 2),
    ("fsdp", 2),
    ("model", 2),
  ]


@pytest.mark.parametrize(
  "axes, devices, message",
  [
    ((("data", -1), ("fsdp", -1)), 8, "at most one"),
    ((("data", -1), ("fsdp", 3)), 8, "not divisible"),
    ((("data", 2), ("fsdp", 2)), 8, "hold 4 devices"),
    ((("data", 0),), 8, "positive"),
    ((("data", -1), ("data", 1)), 8, "repeated"),
  ],
)
def test_resolve_axis_sizes_rejects_bad_layouts(axes, devices, message):
  with pytest.raises(ValueError, match=message):
    sharding.resolve_axis_sizes(axes, devices)


def test_make_mesh_from_the_default_config():
  mesh = sharding.make_mesh(common.mesh_config())
  assert mesh.axis_names == ("data", "fsdp")
  assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1}
  assert tuple(mesh.axis_types) == (jax.sharding.AxisType.Auto,) * 2


def test_make_mesh_options():
  explicit = sharding.make_mesh(dict(axes=(("data", -1),), axis_types="explicit"))
  assert tuple(explicit.axis_types) == (jax.sharding.AxisType.Explicit,)
  with pytest.raises(ValueError, match="axis_types"):
    sharding.make_mesh(dict(axes=(("data", -1),), axis_types="manual-ish"))
  with pytest.raises(ValueError, match="dcn_axes name unknown"):
    sharding.make_mesh(dict(axes=(("data", -1),), dcn_axes=(("replica", 2),)))


def test_batch_sharding_splits_the_leading_dim_over_data_axes():
  mesh = sharding.make_mesh(dict(axes=(("data", -1), ("fsdp", 1), ("model", 1))))
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
  assert sharding.batch_sharding(mesh, ("data",)).spec == P(("data",))
  assert sharding.num_batch_shards(mesh) == jax.device_count()
  assert sharding.mesh_batch_axes(mesh, ("fsdp", "data")) == ("data", "fsdp")  # mesh order
  assert sharding.replicated(mesh).spec == P()
  with pytest.raises(ValueError, match="none of the batch axes"):
    sharding.batch_sharding(mesh, ("replica",))


# --------------------------------------------------------------------------------------------------
# Parameter sharding rules.
# --------------------------------------------------------------------------------------------------


def _shapes(tree):
  return jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s, jnp.float32), tree, is_leaf=lambda s: isinstance(s, tuple)
  )


FAKE_PARAMS = _shapes(
  {
    "image": {
      "stem": {"kernel": (7, 7, 1, 64)},  # 3136 elements: small
      "block0": {"conv": {"kernel": (3, 3, 64, 64)}},  # 36864: fsdp on a 64
      "head": {"kernel": (510, 256), "bias": (256,)},
    },  # 510 % 4 != 0: fsdp on dim 1
    "text": {
      "embed": {"embedding": (30000, 128)},
      "layers": [{"attn": {"query": {"kernel": (128, 128)}}}, {"mlp": {"kernel": (64, 64)}}],
    },
    "odd": (3, 5, 7, 11, 13),  # large, nothing divisible
  }
)


def test_tree_paths_join_keys_and_indices():
  paths = jax.tree.leaves(sharding.tree_paths(FAKE_PARAMS))
  assert "image/head/kernel" in paths
  assert "text/layers/0/attn/query/kernel" in paths
  assert "text/layers/1/mlp/kernel" in paths
  assert "odd" in paths


def test_param_specs_rules_then_automatic_fsdp():
  mesh = AbstractMesh((2, 4, 2), ("data", "fsdp", "model"))
  rules = [
    (r"attn/.*/kernel$", (None, "model")),
    (r"embed/embedding$", ("model", "fsdp")),
    (r"bias$", ()),
    (r"attn/.*", ("fsdp",)),
  ]  # never reached for the query kernel: first match wins
  specs = sharding.param_specs(FAKE_PARAMS, mesh, rules, fsdp_min_size=4096)
  flat = dict(
    zip(
      jax.tree.leaves(sharding.tree_paths(FAKE_PARAMS)),
      jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)),
      strict=True,
    )
  )
  assert flat["text/layers/0/attn/query/kernel"] == P(None, "model")
  assert flat["text/embed/embedding"] == P("model", "fsdp")
  assert flat["image/head/bias"] == P()
  assert flat["image/stem/kernel"] == P()  # below fsdp_min_size
  assert flat["image/block0/conv/kernel"] == P(
    None, None, "fsdp"
  )  # largest divisible, first of ties
  assert flat["image/head/kernel"] == P(None, "fsdp")  # 510 not divisible by 4
  assert flat["text/layers/1/mlp/kernel"] == P("fsdp")  # 4096 elements: at the threshold
  assert flat["odd"] == P()


def test_param_specs_without_fsdp_axis_replicate():
  mesh = AbstractMesh((8,), ("data",))
  specs = sharding.param_specs(FAKE_PARAMS, mesh, fsdp_min_size=1)
  assert all(s == P() for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))


@pytest.mark.parametrize(
  "rule, message",
  [
    ((r"head/kernel", ("tensor",)), "no mesh axis 'tensor'"),
    ((r"head/kernel", ("fsdp",)), "not divisible"),
    ((r"head/bias", (None, "fsdp")), "more entries"),
    ((r"head/kernel", ("fsdp", "fsdp")), "twice"),
  ],
)
def test_param_specs_reject_bad_rules(rule, message):
  mesh = AbstractMesh((2, 4), ("data", "fsdp"))
  with pytest.raises(ValueError, match=message):
    sharding.param_specs(FAKE_PARAMS, mesh, [rule])


def test_param_shardings_on_a_real_mesh_and_config_rules():
  mesh = sharding.make_mesh(common.mesh_config())
  shardings = sharding.param_shardings(FAKE_PARAMS, mesh, [(r"bias$", ())], fsdp_min_size=1)
  leaves = jax.tree.leaves(shardings)
  assert len(leaves) == len(jax.tree.leaves(FAKE_PARAMS))
  assert all(isinstance(s, jax.sharding.NamedSharding) and s.mesh == mesh for s in leaves)
