"""Command line: `python -m jimte.main --config configs/default.py --workdir DIR
[--config.key=value]`.

A thin layer over `jimte.train.train_and_evaluate`: parses the config (an unknown override key is an
error naming it), sets up logging and, for multi-process runs, jax.distributed.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jimte import hugepages

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Path to a config file, e.g. configs/default.py[:arg].", lock_config=True
)
flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics, the tokenizer and figures."
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and TF are chatty at INFO
  logging.getLogger("jimte").setLevel(logging.INFO)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax

  if FLAGS.coordinator_address or os.environ.get("JIMTE_MULTIPROCESS"):
    # CPU collectives across processes (localhost tests); ignored by TPU/GPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      FLAGS.coordinator_address, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id
    )
  from jimte import train

  config = FLAGS.config
  try:
    train.train_and_evaluate(config, FLAGS.workdir, progress=FLAGS.progress)
  except train.NonFiniteError as e:
    logging.error("%s", e)
    sys.exit(3)


def run() -> None:
  """Console entry point (`jimte-train`)."""
  hugepages.reexec_with_hugepages()  # first: it replaces the process where it matters
  app.run(main)


if __name__ == "__main__":
  run()
