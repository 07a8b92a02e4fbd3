"""TPU VM pods through gcloud: create, install, run on every worker, follow logs, delete.

  python -m launch.tpu_pod create  --name jimte-v4 --zone us-central2-b --accelerator v4-32
  python -m launch.tpu_pod install --name jimte-v4 --zone us-central2-b
  python -m launch.tpu_pod run     --name jimte-v4 --zone us-central2-b \
      --workdir gs://BUCKET/jimte/paper -- \
      --config configs/joimternet_paper.py:tfds_name=iu_xray,tfds_data_dir=gs://BUCKET/tfds
  python -m launch.tpu_pod logs    --name jimte-v4 --zone us-central2-b [--worker 0]
  python -m launch.tpu_pod stop    --name jimte-v4 --zone us-central2-b   # SIGTERM: save and exit
  python -m launch.tpu_pod delete  --name jimte-v4 --zone us-central2-b
Add --dry_run to any of them to print the exact commands instead of running them.

`install` copies this checkout (git archive of HEAD) to every worker and runs scripts/setup.sh there
plus jax[tpu]; `run` starts `jimte.main` on every worker at once with JIMTE_MULTIPROCESS=1, so each
calls jax.distributed.initialize() (which discovers the pod's coordinator itself). The work dir must
be on GCS so that every worker sees the same checkpoints; a restarted `run` resumes from it.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence

REMOTE_DIR = "jimte"
REMOTE_LOG = "jimte.log"
ARCHIVE = "/tmp/jimte-src.tar.gz"


def _tpu(action: str, name: str, zone: str, project: str | None) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", action, name, f"--zone={zone}"]
  return cmd + ([f"--project={project}"] if project else [])


def _ssh(args, command: str, worker: str = "all") -> list[str]:
  return _tpu("ssh", args.name, args.zone, args.project) + [
    f"--worker={worker}",
    f"--command={command}",
  ]


def commands(args) -> list[list[str]]:
  """The gcloud (and git) commands for `args.action`, in order."""
  if args.action == "create":
    cmd = _tpu("create", args.name, args.zone, args.project) + [
      f"--accelerator-type={args.accelerator}",
      f"--version={args.runtime_version}",
    ]
    if args.spot:
      cmd.append("--spot")
    return [cmd]
  if args.action == "install":
    setup = (
      f"mkdir -p {REMOTE_DIR} && tar -xzf ~/jimte-src.tar.gz -C {REMOTE_DIR} && cd {REMOTE_DIR} && "
      f"bash scripts/setup.sh && .venv/bin/pip install -q 'jax[tpu]=={args.jax_version}'"
    )
    return [
      ["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"],
      _tpu("scp", args.name, args.zone, args.project)
      + [ARCHIVE, f"{args.name}:~/jimte-src.tar.gz", "--worker=all"],
      _ssh(args, setup),
    ]
  if args.action == "run":
    if not args.workdir.startswith("gs://"):
      raise SystemExit(
        f"--workdir must be a gs:// path shared by all workers, got {args.workdir!r}"
      )
    main_args = " ".join(shlex.quote(a) for a in args.main_args)
    remote = (
      f"cd {REMOTE_DIR} && JIMTE_MULTIPROCESS=1 nohup .venv/bin/python -m jimte.main "
      f"--workdir={shlex.quote(args.workdir)} --noprogress {main_args} > ~/{REMOTE_LOG} 2>&1 &"
    )
    return [_ssh(args, remote)]
  if args.action == "logs":
    return [_ssh(args, f"tail -n 200 -f ~/{REMOTE_LOG}", worker=str(args.worker))]
  if args.action == "stop":
    return [_ssh(args, "pkill -TERM -f 'jimte.main' || true")]
  if args.action == "delete":
    return [_tpu("delete", args.name, args.zone, args.project) + ["--quiet"]]
  raise SystemExit(f"unknown action {args.action!r}")


def parse(argv: Sequence[str] | None = None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("action", choices=["create", "install", "run", "logs", "stop", "delete"])
  parser.add_argument("--name", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None)
  parser.add_argument("--accelerator", default="v4-32", help="accelerator type, e.g. v4-32, v5p-64")
  parser.add_argument("--runtime_version", default="tpu-ubuntu2204-base")
  parser.add_argument("--spot", action="store_true", help="spot (pre-emptible) capacity")
  parser.add_argument("--jax_version", default="0.10.2")
  parser.add_argument("--workdir", default="", help="gs:// work dir for run")
  parser.add_argument("--worker", default="0", help="worker whose log to follow")
  parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  argv = list(sys.argv[1:] if argv is None else argv)
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  args.main_args = argv[split + 1 :]  # everything after -- goes to jimte.main
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse(argv)
  for cmd in commands(args):
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
      code = subprocess.call(cmd)
      if code:
        return code
  return 0


if __name__ == "__main__":
  sys.exit(main())
