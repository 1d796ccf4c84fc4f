"""Start N mlxd replicas on one machine behind HAProxy with session affinity.

    .venv/bin/python deploy/replicas.py [--replicas 2] [--port 8000] [-- mlxd args...]

Each replica gets its own port and KV directory and shares one stored-responses
directory (under --state, default ./replicas-state); HAProxy (Debian's `haproxy`) listens
on --port with deploy/haproxy.cfg.in rendered for them. Ctrl-C or SIGTERM stops the proxy
and drains every replica (they persist their sessions). `render()` is what the e2e test
uses to run the same configuration.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = Path(__file__).with_name("haproxy.cfg.in")
ROOT = Path(__file__).resolve().parent.parent


def render(bind: str, replicas: Sequence[str]) -> str:
    """The HAProxy configuration for `bind` ("127.0.0.1:8000") and replica addresses."""
    servers = "\n".join(f"    server r{i} {addr}" for i, addr in enumerate(replicas, 1))
    return TEMPLATE.read_text().replace("@BIND@", bind).replace("@SERVERS@", servers)


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--port", type=int, default=8000, help="the proxy's port")
    p.add_argument("--first-replica-port", type=int, default=8101)
    p.add_argument("--state", type=Path, default=Path("replicas-state"))
    args = p.parse_args(argv)
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        print("haproxy not found (Debian: apt-get install haproxy)", file=sys.stderr)
        return 2
    args.state.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    addresses = []
    for i in range(args.replicas):
        port = args.first_replica_port + i
        env = {**os.environ, "MLXD_KV_DIR": str(args.state / f"kv-{i + 1}"),
               "MLXD_RESPONSES_DIR": str(args.state / "responses")}
        procs.append(subprocess.Popen([sys.executable, "-m", "app", "--port", str(port),
                                       *extra], cwd=ROOT, env=env))
        addresses.append(f"127.0.0.1:{port}")
    config = args.state / "haproxy.cfg"
    config.write_text(render(f"127.0.0.1:{args.port}", addresses))
    procs.append(subprocess.Popen([haproxy, "-W", "-db", "-f", str(config)]))
    print(f"proxy on http://127.0.0.1:{args.port} -> {', '.join(addresses)}", flush=True)

    def stop(*_: object) -> None:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while any(proc.poll() is None for proc in procs):
        time.sleep(0.5)
        if any(proc.poll() is not None for proc in procs):
            stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
