#!/usr/bin/env bash
# One process on this machine (all its local devices):
#   launch/local.sh configs/default.py workdirs/default [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}"; workdir="${2:?workdir}"; shift 2
exec .venv/bin/python -m jimte.main --config "$config" --workdir "$workdir" "$@"
