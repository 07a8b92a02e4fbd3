"""Tests for `jimte.batches`: host batches to global arrays (JAX side, in subprocesses for the
device flags)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
    _run_jax(
      GLOBAL_BATCH_SCRIPT, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    )
  )


def test_to_global_batch_across_two_real_processes():
  import socket

  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [
    _run_jax(TWO_PROCESS_GLOBAL_BATCH_SCRIPT, str(port), str(i), env_extra=env) for i in range(2)
  ]
  for proc in procs:
    _expect_ok(proc)
