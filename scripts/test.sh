#!/usr/bin/env bash
# Run the whole test suite (sets everything up first). Fails when any test fails
# or when no test ran at all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh dev
export HF_HUB_OFFLINE=1  # tests never touch the network
set +e
.venv/bin/python -m pytest -p no:cacheprovider -rfE "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit $rc
