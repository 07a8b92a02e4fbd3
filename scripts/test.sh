#!/usr/bin/env bash
# The test command of the README: set-up, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two pytest-xdist workers, whole files per worker (a module's fixtures, such as the reference
# training runs, are made once); test files are split so that the trainer runs share the workers.
# On 2 cores 14 min for 693 tests (2026-12-08: 22 min before LLVM's -O0 for the tests' compiles,
# tests/conftest.py, and the tf.data maps traced without autograph; 60 before the shared
# compilation cache); the 25 slowest are printed, to know what to trim.
# One fresh XLA compilation cache per session, shared by the workers and the runs they start
# (tests/conftest.py): identical runs compile once.
JAX_COMPILATION_CACHE_DIR="$(mktemp -d -t jimte-jax-cache-XXXXXX)"
export JAX_COMPILATION_CACHE_DIR
trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
# 2 MiB pages for XLA's per-step buffers (jimte/hugepages.py: the programs re-exec themselves with
# this; pytest's workers and the runs they start get it from here).
GLIBC_TUNABLES="$(.venv/bin/python -m jimte.hugepages)"
export GLIBC_TUNABLES
.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=25 tests "$@"
