"""N processes of `jimte.main` on this machine, joined by jax.distributed (gloo CPU collectives).

  python -m launch.multiprocess --num_processes 2 --devices_per_process 4 -- \
      --config configs/default.py --workdir workdirs/mp [--config.key=value ...]

Each process gets `--xla_force_host_platform_device_count=<devices_per_process>` CPU devices, so
2 x 4 forms the same 8-device mesh as one process with 8. Output lines are prefixed with the process
id. If one process fails, the others are stopped; SIGTERM/SIGINT are forwarded to all (they save a
checkpoint and exit). The exit code is the first non-zero one.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_commands(
  num_processes: int,
  port: int,
  main_args: list[str],
  python: str = sys.executable,
  module: str = "jimte.main",
) -> list[list[str]]:
  """The command line of each process."""
  return [
    [
      python,
      "-m",
      module,
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={i}",
      *main_args,
    ]
    for i in range(num_processes)
  ]


def process_env(devices_per_process: int, base: dict | None = None) -> dict:
  env = dict(os.environ if base is None else base)
  flags = [
    f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
  ]
  env["XLA_FLAGS"] = " ".join(
    flags + [f"--xla_force_host_platform_device_count={devices_per_process}"]
  )
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def run(
  num_processes: int,
  devices_per_process: int,
  main_args: list[str],
  *,
  module: str = "jimte.main",
  port: int | None = None,
  timeout: float | None = None,
  cwd: str | None = None,
) -> int:
  """Starts the processes, streams their output, and returns the first non-zero exit code (or 0)."""
  port = port or free_port()
  env = process_env(devices_per_process)
  procs = [
    subprocess.Popen(
      cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    for cmd in process_commands(num_processes, port, main_args, module=module)
  ]

  def pump(i, proc):
    for line in proc.stdout:
      sys.stdout.write(f"[{i}] {line}")
      sys.stdout.flush()

  threads = [threading.Thread(target=pump, args=(i, p), daemon=True) for i, p in enumerate(procs)]
  for t in threads:
    t.start()

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  deadline = None if timeout is None else time.monotonic() + timeout
  code = 0
  try:
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed or (deadline and time.monotonic() > deadline):
        code = failed[0] if failed else 124
        for p in procs:
          if p.poll() is None:
            p.terminate()
        for p in procs:
          try:
            p.wait(timeout=30)
          except subprocess.TimeoutExpired:
            p.kill()
        break
      time.sleep(0.2)
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
    for t in threads:
      t.join(timeout=5)
  return code or next((p.returncode for p in procs if p.returncode), 0)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--module", default="jimte.main")
  argv = list(sys.argv[1:] if argv is None else argv)
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  main_args = argv[split + 1 :]  # everything after -- goes to jimte.main
  return run(
    args.num_processes,
    args.devices_per_process,
    main_args,
    module=args.module,
    port=args.port or None,
  )


if __name__ == "__main__":
  sys.exit(main())
