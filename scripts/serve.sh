#!/usr/bin/env bash
# Start mlxd on 127.0.0.1:8000 with the embedded default models (extra args go to `mlxd`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/mlxd" "$@"
