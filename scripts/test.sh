#!/usr/bin/env bash
# The test command of the README: set-up, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two pytest-xdist workers, whole files per worker (a module's fixtures, such as the reference
# training runs, are made once); test files are split so that the trainer runs share the workers.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile tests "$@"
