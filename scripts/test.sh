#!/usr/bin/env bash
# Run the whole test suite (sets everything up first): the static checks (ruff, the
# import-layer contracts, mypy), then pytest. Fails when any check or test fails, or
# when no test ran at all. Arguments go to pytest: `./scripts/test.sh -m unit` is the
# inner loop (kinds: unit, engine, models, e2e; see tests/conftest.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh dev
export HF_HUB_OFFLINE=1  # tests never touch the network
echo "test.sh: ruff, import contracts, mypy" >&2
.venv/bin/ruff check app tests bench deploy
.venv/bin/lint-imports --no-cache >/dev/null || { .venv/bin/lint-imports --no-cache; exit 1; }
.venv/bin/mypy app
set +e
.venv/bin/python -m pytest -p no:cacheprovider -rfE "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit $rc
