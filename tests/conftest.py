"""Process set-up and the test kinds.

OpenBLAS and the CPU process tuning must be in place before anything imports mlx, so
this runs first. Each folder is a kind, marked for `./scripts/test.sh -m <kind>`:
unit (pure code, small arrays), engine (tiny random-weight models in-process), models
(real weights in-process), e2e (a real server with real weights).
"""

from app.accel.process import prepare_process

prepare_process()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

KINDS = ("unit", "engine", "models", "e2e")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(item.path).resolve().relative_to(TESTS).parts[0]
        if kind not in KINDS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of {KINDS}")
        item.add_marker(kind)
