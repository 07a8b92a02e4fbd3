"""The ITM objective over devices (`jimte.losses.itm_objective`) against the dense reference of the
contract (tests/reference_losses.py): on a one-device mesh here, and on 8 simulated CPU devices in a
subprocess (tests/_parallel_checks.py: the device-count flag must be set before jax is imported, and
the rest of the suite runs with one device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from jimte import losses, sharding
from launch import multiprocess
from tests import reference_losses as ref

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5  # float32, relative (see _parallel_checks.rel: max |a - b| / max |b|)
HYPER = dict(gamma1=4.0, gamma2=5.0, gamma3=10.0, sentence_margin=0.5, word_margin=0.5)


# --------------------------------------------------------------------------------------------------
# The objective in this process (a one-device mesh: the shard_map path with d = 1).
# --------------------------------------------------------------------------------------------------


def _inputs(batch=6, regions=4, words=5, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  valid = rng.integers(1, words + 1, size=batch)
  return (
    jnp.asarray(rng.standard_normal((batch, dim)), jnp.float32),
    jnp.asarray(rng.standard_normal((batch, dim)), jnp.float32),
    jnp.asarray(rng.standard_normal((batch, regions, dim)), jnp.float32),
    jnp.asarray(rng.standard_normal((batch, words, dim)), jnp.float32),
    jnp.asarray(np.arange(words)[None] < valid[:, None]),
  )


@pytest.mark.parametrize("local_pairs", ["global", "device"])
def test_one_device_mesh_matches_the_dense_reference_values_and_grads(local_pairs):
  mesh = sharding.make_mesh(dict(axes=(("data", -1), ("fsdp", 1))), devices=jax.devices()[:1])
  img, txt, regions, words, mask = _inputs()
  neg = losses.sample_negatives(jax.random.key(0), img.shape[0])
  study = jnp.asarray([0, 1, 1, 2, 3, 3], jnp.int32)
  objective = losses.itm_objective(mesh, local_pairs=local_pairs, **HYPER)

  def grads(fn):
    return jax.jit(
      jax.value_and_grad(lambda *a: fn(*a, mask, neg, study), argnums=(0, 1, 2, 3), has_aux=True)
    )(img, txt, regions, words)

  (total, terms), g = grads(objective)
  (ref_total, ref_terms), ref_g = grads(
    lambda *a: ref.itm_loss(*a[:5], a[5], study_ids=a[6], **HYPER)
  )
  assert sorted(terms) == sorted(losses.TERM_NAMES)
  np.testing.assert_allclose(float(total), float(ref_total), rtol=TOL)
  for name in losses.TERM_NAMES:
    np.testing.assert_allclose(float(terms[name]), float(ref_terms[name]), rtol=TOL, err_msg=name)
  for a, b in zip(g, ref_g, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL * float(jnp.max(jnp.abs(b))))


def test_objective_validates_its_arguments():
  mesh = sharding.make_mesh(common.mesh_config())
  with pytest.raises(ValueError, match="local_pairs"):
    losses.itm_objective(mesh, local_pairs="host")
  with pytest.raises(ValueError, match="unknown ITM terms"):
    losses.itm_objective(mesh, weights={"word_ce": 1.0})
  fn = losses.itm_objective(mesh)
  img, txt, regions, words, mask = _inputs()
  with pytest.raises(ValueError, match="neg_idx is needed"):
    fn(img, txt, regions, words, mask, None)
  with pytest.raises(ValueError, match="regions is needed"):
    fn(img, txt, None, words, mask, jnp.zeros(6, jnp.int32))
  with pytest.raises(ValueError, match="'hardest'"):
    fn(img, txt, regions, words, mask, "easiest")
  with pytest.raises(ValueError, match="batch size"):
    fn(img, txt[:4], regions, words, mask, jnp.zeros(6, jnp.int32))


# --------------------------------------------------------------------------------------------------
# 8 simulated devices, in a subprocess (tests/_parallel_checks.py).
# --------------------------------------------------------------------------------------------------

CORE = (
  "global_data8",
  "global_data4_fsdp2",
  "device_data8",
  "device_data4_fsdp2",
  "sample_negatives",
  "param_shardings",
  "pieced_conv_grads",
)
EXTENDED = (
  "global_pair_negatives_no_study",
  "global_hardest",
  "global_gather",
  "device_hardest",
  "model_axis",
  "word_triplets_without_word_ce",
  "sentence_only_without_word_inputs",
  "explicit_mesh",
  "device_mode_off_device_negative",
  "memory_flat",
)


def _run_checks(names) -> dict:
  env = multiprocess.process_env(8)  # the script asks for 8 devices too; other flags kept
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  done = subprocess.run(
    [sys.executable, str(REPO / "tests" / "_parallel_checks.py"), *names],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  assert done.returncode == 0, done.stderr[-6000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


class _Results(dict):
  """Check name -> result; a check that raised in the subprocess fails its test with the
  traceback."""

  def __getitem__(self, name):
    result = super().__getitem__(name)
    if "error" in result:
      pytest.fail(f"check {name} raised in the 8-device subprocess:\n{result['error']}")
    return result


@pytest.fixture(scope="module")
def core():
  return _Results(_run_checks(CORE))


@pytest.fixture(scope="module")
def extended():
  return _Results(_run_checks(EXTENDED))


def _assert_matches(result, terms=losses.TERM_NAMES):
  assert result["terms"] == sorted(terms)
  assert result["total_rel"] < TOL
  assert result["terms_rel"] < TOL
  if "grads_rel" in result:
    assert result["grads_rel"] < TOL
    assert result["grad_norm"] > 0.1  # the gradients compared are not trivially zero


@pytest.mark.parametrize("name", ["global_data8", "global_data4_fsdp2"])
def test_global_mode_equals_single_device(core, name):
  _assert_matches(core[name])


@pytest.mark.parametrize("name", ["device_data8", "device_data4_fsdp2"])
def test_device_mode_equals_mean_of_per_device_losses(core, name):
  _assert_matches(core[name])


def test_within_shard_negatives(core):
  result = core["sample_negatives"]
  assert result["self_hits"] == 0
  assert result["off_shard"] == 0
  assert result["distinct_per_anchor"] == [3] * 16  # every other member of the shard of 4 drawn


def test_params_created_sharded_follow_the_rules(core):
  result = core["param_shardings"]
  assert result["text/attn/query/kernel"]["shard"] == [128, 64]  # rule: columns over model=2
  assert result["text/embed/embedding"]["shard"] == [500, 128]  # rule: rows over fsdp=2
  assert result["image/head/kernel"]["shard"] == [256, 96]  # automatic fsdp, largest dim
  assert result["image/head/bias"]["shard"] == [96]  # small: replicated
  assert result["image/stem/kernel"]["shard"] == [7, 7, 1, 64]  # below fsdp_min_size


def test_pieced_kernel_gradient_on_a_sharded_batch_equals_one_device_and_moves_no_activation(core):
  result = core["pieced_conv_grads"]
  assert result["pieces"] == 2
  assert result["input_rel"] < TOL
  assert result["kernel_rel"] < TOL
  assert result["kernel_norm"] > 0.1
  assert result["activation_collectives"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(
  "name",
  [
    "global_pair_negatives_no_study",
    "global_hardest",
    "global_gather",
    "device_hardest",
    "model_axis",
  ],
)
def test_sharded_variants_equal_single_device(extended, name):
  _assert_matches(extended[name])


@pytest.mark.slow
def test_weight_zero_terms_are_skipped(extended):
  _assert_matches(
    extended["word_triplets_without_word_ce"],
    [t for t in losses.TERM_NAMES if not t.startswith("word_ce")],
  )
  _assert_matches(
    extended["sentence_only_without_word_inputs"],
    [t for t in losses.TERM_NAMES if t.startswith("sentence")],
  )


@pytest.mark.slow
def test_explicit_axis_mesh_on_unsharded_inputs(extended):
  assert extended["explicit_mesh"]["total_rel"] < TOL
  assert extended["explicit_mesh"]["terms_rel"] < TOL


@pytest.mark.slow
def test_device_mode_flags_off_device_negatives_with_nan(extended):
  nan = extended["device_mode_off_device_negative"]
  assert nan["word_triplet_i2t"] and nan["word_triplet_t2i"]
  assert not any(v for k, v in nan.items() if not k.startswith("word_triplet"))


@pytest.mark.slow
def test_ring_memory_stays_flat_while_gather_grows(extended):
  mem = extended["memory_flat"]
  assert mem["global_d8"] < 1.2 * mem["global_d1"]
  assert mem["global_gather_d8"] > 4 * mem["global_gather_d1"]
