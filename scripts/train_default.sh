#!/usr/bin/env bash
# The main job of the README: set-up, then train and evaluate on the built-in synthetic set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m jimte.main --config configs/default.py --workdir "${WORKDIR:-workdirs/default}" "$@"
