"""The launchers: the TPU pod path's exact gcloud commands (dry run), and the local multi-process
launcher's process commands and environment."""

import shlex
import subprocess
import sys

import pytest

from launch import multiprocess, tpu_pod


def _dry(argv):
  return [
    shlex.split(line)
    for line in subprocess.run(
      [sys.executable, "-m", "launch.tpu_pod", "--dry_run", *argv],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.splitlines()
  ]


def test_tpu_pod_create_dry_run():
  [cmd] = _dry(
    ["create", "--name", "pod1", "--zone", "us-central2-b", "--accelerator", "v4-32", "--spot"]
  )
  assert cmd == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "pod1",
    "--zone=us-central2-b",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
    "--spot",
  ]


def test_tpu_pod_install_copies_head_and_sets_up_every_worker():
  cmds = _dry(["install", "--name", "pod1", "--zone", "z", "--project", "proj"])
  assert cmds[0][:2] == ["git", "archive"]
  assert cmds[1][4] == "scp" and "--worker=all" in cmds[1] and "--project=proj" in cmds[1]
  remote = next(a for a in cmds[2] if a.startswith("--command="))
  assert "--worker=all" in cmds[2]
  assert "bash scripts/setup.sh" in remote and "jax[tpu]==" in remote


def test_tpu_pod_run_starts_main_on_all_workers_with_gcs_workdir():
  [cmd] = _dry(
    [
      "run",
      "--name",
      "pod1",
      "--zone",
      "z",
      "--workdir",
      "gs://b/run1",
      "--",
      "--config",
      "configs/joimternet_paper.py:image_size=1024",
      "--config.batch_size=256",
    ]
  )
  assert cmd[4] == "ssh" and "--worker=all" in cmd
  remote = next(a for a in cmd if a.startswith("--command="))[len("--command=") :]
  assert "JIMTE_MULTIPROCESS=1" in remote
  assert "--workdir=gs://b/run1" in remote
  assert "--config configs/joimternet_paper.py:image_size=1024 --config.batch_size=256" in remote


def test_tpu_pod_run_refuses_a_local_workdir():
  with pytest.raises(SystemExit, match="gs://"):
    tpu_pod.commands(tpu_pod.parse(["run", "--name", "p", "--zone", "z", "--workdir", "/tmp/x"]))


def test_tpu_pod_logs_stop_delete():
  [logs] = _dry(["logs", "--name", "p", "--zone", "z", "--worker", "3"])
  assert "--worker=3" in logs and any("tail" in a for a in logs)
  [stop] = _dry(["stop", "--name", "p", "--zone", "z"])
  assert any("pkill -TERM" in a for a in stop)
  [delete] = _dry(["delete", "--name", "p", "--zone", "z"])
  assert (
    delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "p"] and "--quiet" in delete
  )


def test_multiprocess_commands_and_env():
  cmds = multiprocess.process_commands(2, 1234, ["--config", "c.py"], python="py")
  assert cmds[1] == [
    "py",
    "-m",
    "jimte.main",
    "--coordinator_address=127.0.0.1:1234",
    "--num_processes=2",
    "--process_id=1",
    "--config",
    "c.py",
  ]
  env = multiprocess.process_env(4, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --foo"})
  assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=4"
