"""The mlxd process shared by the end-to-end tests."""

from collections.abc import Iterator

import pytest

from tests.harness import Server, run_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real mlxd process with the default models, shared by the end-to-end tests."""
    tmp = tmp_path_factory.mktemp("server")
    env = {"MLXD_KEEPALIVE_SECONDS": "0.2", "MLXD_KV_DIR": str(tmp / "kv"),
           "MLXD_MAX_AUDIO_BYTES": str(2 * 1024 * 1024)}
    with run_server(tmp, env=env) as srv:
        yield srv
