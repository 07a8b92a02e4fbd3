"""`tfds build <builder>` as the README writes it builds the default config and exits 0 (issue 13).

TFDS's CLI builds every config when none is named; ours builds the default one and says, in one
line per config, what it left out. A named config still builds, and still fails loudly when its
inputs are absent. Every builder with more than one config is run through the real CLI here.
"""

from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline.builders import cli_configs
from tests._builder_helpers import COVID_DIR, IU_DIR, REPO, write_png
from tests._mimic_tree import write_mimic_tree

TFDS = Path(sys.executable).parent / "tfds"  # the README's `.venv/bin/tfds`
BUILDERS = ("covid_cxr", "iu_xray", "mimic_cxr", "synthetic_cxr")


def _builder_cls(name: str):
  return importlib.import_module(f"data_pipeline.builders.{name}").Builder


def _tfds(args: list[str]) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(
    [str(TFDS), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )


def _built_configs(data_dir: Path, name: str) -> set[str]:
  root = data_dir / name
  if not root.is_dir():
    return set()
  return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


# --------------------------------------------------------------------------- the argv rule


@pytest.mark.parametrize(
  ("argv", "named"),
  [
    (["tfds", "build", "data_pipeline/builders/iu_xray", "--data_dir", "/nonexistent/out"], False),
    (["tfds", "build", "data_pipeline/builders/iu_xray", "--config", "r2gen"], True),
    (["tfds", "build", "data_pipeline/builders/iu_xray", "-c", "r2gen"], True),
    (["tfds", "build", "data_pipeline/builders/iu_xray", "--config_idx", "1"], True),
    (["tfds", "build", "iu_xray/r2gen", "--imports", "data_pipeline.builders.iu_xray"], True),
    (["tfds", "build", "--datasets", "iu_xray/r2gen"], True),
    (["tfds", "build", "iu_xray", "--imports", "data_pipeline.builders.iu_xray"], False),
  ],
)
def test_names_a_config_reads_the_cli_flags(argv, named):
  assert cli_configs.running_tfds_build(argv)
  assert cli_configs.tfds_build_names_a_config(argv) is named


def test_only_the_tfds_build_cli_skips():
  builder = _builder_cls("synthetic_cxr")(config="small", data_dir="/nonexistent")
  build_all = ["/x/.venv/bin/tfds", "build", "data_pipeline/builders/synthetic_cxr"]
  line = cli_configs.skipped_by_cli_default(builder, build_all)
  assert line is not None and "'small' not built" in line and "--config small" in line
  assert cli_configs.skipped_by_cli_default(builder, [*build_all, "--config", "small"]) is None
  assert cli_configs.skipped_by_cli_default(builder, ["pytest", "tests"]) is None  # Python API
  default = _builder_cls("synthetic_cxr")(config="default", data_dir="/nonexistent")
  assert cli_configs.skipped_by_cli_default(default, build_all) is None


# --------------------------------------------------------------------------- through the CLI


def _iu_manual_dir(root: Path, n_studies: int = 6) -> Path:
  """What Open-i distributes: the real reports archive and an NLMCXR_png.tgz (placeholder PNGs
  for the first `n_studies` studies with images), and no R2Gen annotation file."""
  manual = root / "manual"
  manual.mkdir(parents=True)
  (manual / "NLMCXR_reports.tgz").symlink_to(IU_DIR / "NLMCXR_reports.tgz")
  with open(IU_DIR / "reports_openi.csv", newline="", encoding="utf-8") as f:
    rows = [r for r in csv.DictReader(f) if r["image_ids"] and r["findings"].strip()]
  pngs = root / "png"
  with tarfile.open(manual / "NLMCXR_png.tgz", "w:gz") as tar:
    for row in rows[:n_studies]:
      for position, image_id in enumerate(row["image_ids"].split(";")):
        path = write_png(pngs / f"{image_id}.png", np.full((80, 72), 30 + 50 * position, np.uint8))
        tar.add(path, arcname=path.name)
  return manual


def _cli_case(name: str, tmp_path: Path) -> list[str]:
  """The README's build line of `name` (manual dir made for it), cut to a few examples."""
  if name == "iu_xray":
    return ["--manual_dir", str(_iu_manual_dir(tmp_path))]
  if name == "covid_cxr":
    return ["--manual_dir", str(COVID_DIR), "--max_examples_per_split", "3"]
  if name == "mimic_cxr":  # a generated MIMIC-CXR-JPG tree (30 subjects: every split planned)
    write_mimic_tree(tmp_path / "mimic", subjects=30)
    return ["--manual_dir", str(tmp_path / "mimic")]
  if name == "synthetic_cxr":
    return ["--max_examples_per_split", "3"]
  raise AssertionError(f"no CLI case for the multi-config builder {name}: add one here")


MULTI_CONFIG = [name for name in BUILDERS if len(_builder_cls(name).BUILDER_CONFIGS) > 1]


@pytest.mark.slow
@pytest.mark.skipif(not (IU_DIR.is_dir() and COVID_DIR.is_dir()), reason="shared data absent")
@pytest.mark.parametrize("name", MULTI_CONFIG)
def test_build_without_config_builds_the_default_and_exits_0(name, tmp_path):
  cls = _builder_cls(name)
  default = cls.DEFAULT_BUILDER_CONFIG_NAME
  assert cls.BUILDER_CONFIGS[0].name == default  # the default comes first, as TFDS lists it
  data_dir = tmp_path / "data"
  result = _tfds(
    [
      "build",
      f"data_pipeline/builders/{name}",
      "--data_dir",
      str(data_dir),
      *_cli_case(name, tmp_path),
    ]
  )
  out = result.stdout + result.stderr
  assert result.returncode == 0, out[-3000:]
  assert _built_configs(data_dir, name) == {default}
  builder = tfds.builder_from_directory(str(data_dir / name / default / str(cls.VERSION)))
  assert sum(split.num_examples for split in builder.info.splits.values()) > 0
  for config in cls.BUILDER_CONFIGS[1:]:
    assert f"[{name}] config '{config.name}' not built" in out


@pytest.mark.slow
@pytest.mark.skipif(not IU_DIR.is_dir(), reason="shared iu_xray data absent")
def test_named_config_without_its_inputs_still_fails_naming_the_file(tmp_path):
  manual = _iu_manual_dir(tmp_path, n_studies=2)
  data_dir = tmp_path / "data"
  result = _tfds(
    ["build", "data_pipeline/builders/iu_xray", "--data_dir", str(data_dir)]
    + ["--manual_dir", str(manual), "--config", "r2gen"]
  )
  assert result.returncode != 0
  assert "r2gen_annotation.json" in result.stdout + result.stderr
  assert "default" not in _built_configs(data_dir, "iu_xray")  # only what was named was tried
