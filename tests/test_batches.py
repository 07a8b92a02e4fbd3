"""Tests for `jimte.batches`: host batches to global arrays (JAX side, in subprocesses for the
device flags)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from launch import multiprocess

REPO = Path(__file__).resolve().parents[1]

GLOBAL_BATCH_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    from jax.sharding import Mesh, PartitionSpec
    sys.path.insert(0, sys.argv[1])
    from jimte.batches import prefetch_to_mesh, to_global_batch
    from jimte.sharding import batch_sharding

    assert jax.device_count() == 8, jax.devices()
    devices = np.array(jax.devices())

    def host_batch(rows, step=0):
        rng = np.random.default_rng(step)
        return {
            "image": rng.standard_normal((rows, 4, 4, 1)).astype(np.float32),
            "tokens": rng.integers(0, 100, (rows, 6)).astype(np.int32),
            "index": np.arange(rows, dtype=np.int32) + step * rows,
            "valid": rng.random(rows) > 0.3,
        }

    def check(global_batch, batch, mesh, spec, shard_rows):
        for key, value in batch.items():
            array = global_batch[key]
            assert array.shape == value.shape and array.dtype == value.dtype, (
                key, array.shape, array.dtype)
            assert array.sharding.mesh == mesh and array.sharding.spec == spec, (
                key, array.sharding)
            np.testing.assert_array_equal(np.asarray(array), value)
            for shard in array.addressable_shards:
                assert shard.data.shape[0] == shard_rows, (key, shard.data.shape)
                np.testing.assert_array_equal(np.asarray(shard.data), value[shard.index])

    # Batch over one 'data' axis of 8 devices.
    mesh = Mesh(devices, ("data",))
    batch = host_batch(16)
    check(to_global_batch(batch, mesh), batch, mesh, PartitionSpec(("data",)), 2)

    # 'data' x 'fsdp' both split the batch (4 shards); 'model' replicates it.
    mesh = Mesh(devices.reshape(2, 2, 2), ("data", "fsdp", "model"))
    assert batch_sharding(mesh).spec == PartitionSpec(("data", "fsdp"))
    check(to_global_batch(batch, mesh), batch, mesh, PartitionSpec(("data", "fsdp")), 4)
    # Mesh order decides the layout, whatever order the axes are named in.
    assert batch_sharding(mesh, ("fsdp", "data")).spec == PartitionSpec(("data", "fsdp"))
    only_data = to_global_batch(batch, mesh, batch_axes=("data",))
    check(only_data, batch, mesh, PartitionSpec(("data",)), 8)

    # A jitted reduction over the global batch sees every row once.
    total = jax.jit(lambda b: b["index"].sum())(to_global_batch(batch, mesh))
    assert int(total) == batch["index"].sum()

    # Prefetching keeps order and contents.
    batches = [host_batch(8, step) for step in range(5)]
    seen = list(prefetch_to_mesh(iter(batches), mesh, size=2))
    assert len(seen) == 5
    for got, want in zip(seen, batches):
        check(got, want, mesh, PartitionSpec(("data", "fsdp")), 2)

    for bad, error in (
        (lambda: to_global_batch(host_batch(6), mesh), ValueError),           # 6 rows, 4 shards
        (lambda: to_global_batch(batch, Mesh(devices, ("model",))), ValueError),
        (lambda: to_global_batch({"text": np.array(["a"] * 8)}, mesh), TypeError),
        (lambda: next(prefetch_to_mesh(iter(batches), mesh, size=0)), ValueError),
    ):
        try:
            bad()
        except error:
            pass
        else:
            raise AssertionError(f"expected {error.__name__}")
    print("OK")
""")

TWO_PROCESS_GLOBAL_BATCH_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    sys.path.insert(0, sys.argv[1])
    from jimte.batches import to_global_batch

    port, process_id = int(sys.argv[2]), int(sys.argv[3])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices())
    # Each host contributes 4 rows whose 'index' says which host and row they came from.
    host = {"index": (np.arange(4) + 100 * process_id).astype(np.int32),
            "valid": np.array([True, True, True, process_id == 0])}
    batch = to_global_batch(host, mesh)
    assert batch["index"].shape == (8,)
    for shard in batch["index"].addressable_shards:
        rows = host["index"][shard.index[0].start % 4:][:2]
        np.testing.assert_array_equal(np.asarray(shard.data), rows)
    total = jax.jit(lambda b: b["index"].sum())(batch)
    count = jax.jit(lambda b: b["valid"].sum())(batch)
    assert int(total) == sum(range(4)) + sum(range(100, 104)), int(total)
    assert int(count) == 7, int(count)
    print("OK")
    jax.distributed.shutdown()
""")


def _run_jax(script: str, *args: str, env_extra: dict[str, str]) -> subprocess.Popen:
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu", **env_extra}
  return subprocess.Popen(
    [sys.executable, "-c", script, str(REPO), *args],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _expect_ok(proc: subprocess.Popen) -> None:
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0 and stdout.strip().endswith("OK"), stdout[-2000:] + stderr[-4000:]


def test_to_global_batch_on_eight_simulated_devices():
  _expect_ok(
    _run_jax(GLOBAL_BATCH_SCRIPT, env_extra={"XLA_FLAGS": multiprocess.process_env(8)["XLA_FLAGS"]})
  )


def test_to_global_batch_across_two_real_processes():
  import socket

  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  env = {"XLA_FLAGS": multiprocess.process_env(2)["XLA_FLAGS"]}
  procs = [
    _run_jax(TWO_PROCESS_GLOBAL_BATCH_SCRIPT, str(port), str(i), env_extra=env) for i in range(2)
  ]
  for proc in procs:
    _expect_ok(proc)


# --------------------------------------------------------------------------- text length buckets


def _host_batch(used: list[int], max_len: int = 12) -> dict:
  import numpy as np

  tokens = np.zeros((len(used), max_len), np.int32)
  for row, n in enumerate(used):
    tokens[row, :n] = np.arange(2, 2 + n)
  return {
    "tokens": tokens,
    "mlm_tokens": tokens.copy(),
    "mlm_targets": np.zeros_like(tokens),
    "mlm_weights": np.zeros(tokens.shape, np.float32),
    "region_tokens": np.ones((len(used), 3, 5), np.int32),  # its own length: never cut
    "index": np.arange(len(used)),
  }


def test_trim_text_cuts_only_padding_to_the_smallest_bucket_holding_every_row():
  import numpy as np

  from jimte import batches

  raw = [_host_batch([3, 7]), _host_batch([1, 1]), _host_batch([12, 2]), _host_batch([0, 0])]
  out = list(batches.trim_text(iter(raw), (4, 8, 12)))
  assert [b["tokens"].shape[1] for b in out] == [8, 4, 12, 4]
  for before, after in zip(raw, out, strict=True):
    keep = after["tokens"].shape[1]
    for key in batches.TEXT_KEYS:
      np.testing.assert_array_equal(after[key], before[key][:, :keep])
      assert not before[key][:, keep:].any()  # only padding was cut
    np.testing.assert_array_equal(after["region_tokens"], before["region_tokens"])
  assert [b["tokens"].shape[1] for b in batches.trim_text(iter(raw), ())] == [12] * 4


def test_text_buckets_are_checked_against_the_tokenizer_length():
  import pytest

  from jimte import batches

  assert batches.check_text_buckets((16, 48), 48) == (16, 48)
  assert batches.check_text_buckets((), 48) == ()
  for bad in [(16, 32), (32, 16, 48), (0, 48), (16, 16, 48), (16.0, 48)]:
    with pytest.raises(ValueError, match="config.text_buckets"):
      batches.check_text_buckets(bad, 48)
  with pytest.raises(ValueError, match="largest bucket"):
    batches.bucket_length(49, (16, 48))


def test_a_cut_batch_gives_the_steps_of_the_full_one():
  """The image-text and MLM steps of the tiny config on a batch cut to a 32-position bucket equal
  those on the same batch at all 48 positions: the loss, each term and every updated parameter."""
  import jax
  import numpy as np

  from benchmarks.bench_train_step import fake_batch
  from jimte import batches, optim, sharding, steps
  from jimte.models.joimternet import build_model
  from tests._tiny import param_leaves, tiny_config

  config = tiny_config(**{"loss.mixture": False})
  mesh = sharding.make_mesh(config.mesh)
  model = build_model(config.model.copy_and_resolve_references())
  optimizers = optim.make_optimizers(config.optim)
  schedule = optim.make_schedule(config.optim, 10, 100)
  full = fake_batch(np.random.default_rng(0), 8, config.image_size, 30, 400)
  full = {k: np.pad(v, ((0, 0), (0, 18))) if k in batches.TEXT_KEYS else v for k, v in full.items()}
  (cut,) = batches.trim_text([full], (16, 32, 48))
  assert full["tokens"].shape[1] == 48 and cut["tokens"].shape[1] == 32
  make = {
    "itm": steps.make_itm_step(
      config, model, optimizers, schedule, steps.make_objective(config, mesh), mesh
    ),
    "mlm": steps.make_mlm_step(config, model, optimizers, schedule),
  }
  for kind, step in make.items():
    results = []
    for batch in (full, cut):
      state, _ = steps.init_train_state(config, model, optimizers, mesh, jax.random.key(0))
      state, metrics = jax.jit(step)(state, batch)
      results.append((param_leaves(state), jax.device_get(metrics)))
    (params_full, metrics_full), (params_cut, metrics_cut) = results
    for key in metrics_full:
      if key.startswith("train/") and "norm" not in key:
        np.testing.assert_allclose(
          metrics_cut[key], metrics_full[key], rtol=2e-5, atol=1e-6, err_msg=f"{kind} {key}"
        )
    for a, b in zip(params_cut, params_full, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=kind)


def test_two_processes_cut_their_shares_of_a_global_batch_alike(tmp_path):
  """Pod workers are never in step: process 1 starts late and falls behind again; each process's
  share uses other lengths, and both cut to the bucket of the global batch's longest report."""
  import json

  port = multiprocess.free_port()
  commands = multiprocess.process_commands(2, port, [], module="tests._trim_text_main")
  env = multiprocess.process_env(1)
  procs = [
    subprocess.Popen(
      c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for c in commands
  ]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
  reports = [
    json.loads(line.split("TRIMMED ", 1)[1])
    for out in outputs
    for line in out.splitlines()
    if line.startswith("TRIMMED ")
  ]
  assert sorted(r["process"] for r in reports) == [0, 1]
  for r in reports:  # global used lengths per batch: max(10, 20), max(30, 5), 0
    assert [s["tokens"] for s in r["shapes"]] == [[2, 32], [2, 32], [2, 16]]
    assert [s["mlm_weights"] for s in r["shapes"]] == [[2, 32], [2, 32], [2, 16]]
    assert all(s["index"] == [2] for s in r["shapes"])
