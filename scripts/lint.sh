#!/usr/bin/env bash
# The house style check (CI runs it before the tests): ruff's formatter and linter, configured in
# pyproject.toml. Fails on any finding. To fix: .venv/bin/ruff format . && .venv/bin/ruff check --fix .
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
