"""Shared fixtures. OpenBLAS must be in the process before anything imports mlx."""

from app.blas import load_openblas

load_openblas()

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from tests.server import Server, run_server  # noqa: E402


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real mlxd process with the default models, shared by the end-to-end tests."""
    tmp = tmp_path_factory.mktemp("server")
    env = {"MLXD_KEEPALIVE_SECONDS": "0.2", "MLXD_KV_DIR": str(tmp / "kv"),
           "MLXD_MAX_AUDIO_BYTES": str(2 * 1024 * 1024)}
    with run_server(tmp, env=env) as srv:
        yield srv
