"""Which configs a `tfds build` command line asked for, so that it builds the default one only.

`tfds build <builder>` without a config builds every entry of `BUILDER_CONFIGS` in turn, and
stops with exit code 1 at the first that cannot be built: iu_xray's `r2gen` config without R2Gen's
annotation file, say, or synthetic_cxr's 24,000-phantom `large`. Our rule: a `tfds build` that names
no config (`--config`, `-c`, `--config_idx`, `name/config`) builds the builder's default config and
prints one line per config it leaves out; a named config builds as asked (and fails loudly when its
inputs are absent). The Python API (`Builder(config=...)`) always builds what it is given.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def running_tfds_build(argv: Sequence[str] | None = None) -> bool:
  """Whether this process is the `tfds build` CLI (`tfds` or `python -m ...scripts.cli.main`)."""
  argv = sys.argv if argv is None else argv
  if len(argv) < 2:
    return False
  program = argv[0].replace(os.sep, "/")
  is_tfds = os.path.basename(program) == "tfds" or program.endswith("scripts/cli/main.py")
  return is_tfds and "build" in argv[1:]


def tfds_build_names_a_config(argv: Sequence[str] | None = None) -> bool:
  """Whether a `tfds build` command line names a config, read with TFDS's own flag parser."""
  from tensorflow_datasets.scripts.cli import main as tfds_main  # the CLI's own parser

  argv = list(sys.argv if argv is None else argv)
  command = tfds_main._parse_flags(argv).command  # private, but the one authoritative parse
  generation = command.generation
  if generation.config is not None or generation.config_idx is not None:
    return True
  datasets = [*command.positional_datasets, *command.datasets]
  return any("/" in name and not os.path.exists(name) for name in datasets)


def skipped_by_cli_default(builder, argv: Sequence[str] | None = None) -> str | None:
  """The line to print when `tfds build` without a named config reaches a non-default config of
  `builder` (which is then not built), else None."""
  configs = getattr(builder, "BUILDER_CONFIGS", None) or []
  default = getattr(builder, "DEFAULT_BUILDER_CONFIG_NAME", None) or (
    configs[0].name if configs else None
  )
  config = builder.builder_config
  if len(configs) < 2 or config is None or config.name == default:
    return None
  if not running_tfds_build(argv) or tfds_build_names_a_config(argv):
    return None
  return (
    f"[{builder.name}] config '{config.name}' not built: without a named config, tfds build "
    f"builds the default config '{default}' only (build this one with --config {config.name})"
  )
