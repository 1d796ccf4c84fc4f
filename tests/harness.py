"""Start a real server process on a free loopback port and stop it: one harness for the
end-to-end tests and the benchmarks (bench/common.py), for mlxd and for its peers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
HEALTH_POLL = 0.3
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": "*"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(slots=True)
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        """utime + stime of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mlxd_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "app", *args]


@contextmanager
def launched(argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
             timeout: float = START_TIMEOUT) -> Iterator[Server]:
    """Run `argv --port P` (offline env; `env` values of "" unset a variable) until its
    /health answers 200, yield it, then stop it with SIGTERM (graceful: mlxd persists
    its caches), killing it if it does not exit."""
    port = free_port()
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v != ""}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        proc = subprocess.Popen([*argv, "--port", str(port)], cwd=ROOT, stdout=fh,
                                stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_healthy(server, timeout)
        yield server
    finally:
        stop(server)


def _wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited early ({server.proc.returncode}):\n"
                               f"{server.log_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not healthy in {timeout:.0f}s:\n"
                               f"{server.log_text()[-3000:]}")
        time.sleep(HEALTH_POLL)


def stop(server: Server, timeout: float = STOP_TIMEOUT) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@contextmanager
def run_server(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """mlxd with `args`, its log in `tmp`."""
    with launched(mlxd_argv(*args), tmp / f"server-{time.monotonic_ns()}.log",
                  env=env) as server:
        yield server
