"""Fixtures shared by the test modules, and one compilation cache for the whole test session."""

import os
import tempfile

# XLA's compile of a train step is most of a tiny run's time (~45 of ~70 s on 2 cores), and the
# trainer tests start many identical runs (resume, kill, multi-process): every process of the
# session, the test workers and the runs they start, shares one persistent cache (a truncated
# entry, e.g. of a killed run, is read as a miss). scripts/test.sh gives each session a fresh one.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(tempfile.gettempdir(), f"jimte-tests-jax-cache-{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# LLVM's optimisation level 0 for XLA:CPU's generated code (the HLO passes, fusions and library
# convs / matmuls are the same): compiles are most of the suite's time, and on 2 cores this cut
# tests/test_batches.py's step-equality test 53 -> 36 s and test_train + test_models 201 -> 169 s.
# The processes the tests start inherit it (they append their device counts to XLA_FLAGS); what
# the suite runs at O0 it compares only with runs at O0. JIMTE_TEST_XLA_OPT=1 turns it off.
if os.environ.get("JIMTE_TEST_XLA_OPT") != "1":
  _flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()

import jax  # after the cache's settings, which jax reads at import
import pytest

# (Also where jax was imported before this file: the same settings, read from the environment.)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
  "jax_persistent_cache_min_compile_time_secs",
  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
  "jax_persistent_cache_min_entry_size_bytes",
  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)


@pytest.fixture
def true_float32_matmuls():
  """Full-precision float32 products: these tests check the math, and GPUs default to TF32."""
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture
def x64():
  """Run one test with 64-bit floats, restoring the previous setting afterwards."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def tokenizer():
  """The toy SentencePiece model of the input-pipeline tests (tests/_input_data.py); a module may
  define its own `tokenizer` fixture instead (tests/test_tokenizer.py does)."""
  from tests._input_data import toy_tokenizer

  return toy_tokenizer()


@pytest.fixture(scope="module")
def source():
  """The toy in-memory source of the input-pipeline tests (tests/_input_data.py)."""
  from tests._input_data import toy_source

  return toy_source()


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """A work dir written by `train.train_and_evaluate` on the tiny config (16 synthetic pairs, 4
  steps): config.json, tokenizer/, checkpoints/4. Shared by the inference, export, retrieval and
  classification tests; treat it as read-only."""
  from jimte import train
  from tests._tiny import tiny_config

  workdir = tmp_path_factory.mktemp("trained_workdir")
  c = tiny_config(
    **{
      "data.num_train": 16,
      "data.num_eval": 8,
      "evals.retrieval.pool_size": 8,
      "evals.retrieval.scores": ("global",),
      "total_steps": 4,
      "checkpoint_every_steps": 1000,
    }
  )
  train.train_and_evaluate(c, str(workdir), progress=False)
  return str(workdir)
