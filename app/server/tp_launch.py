"""`mlxd --tensor-parallel N`: start N ranks of this server on this host and watch them.

Each rank is `python -m app` with the same arguments and the environment `mlx.launch`
would give it (MLX_RANK, and a ring hostfile over loopback or NCCL's rendezvous). Rank 0
serves HTTP; the others hold their shards (app/engine/tp/). A group is only whole with
every rank, so when one rank exits the others are stopped and this process exits
non-zero, naming the rank; SIGTERM/SIGINT go to rank 0, whose drain stops the group.
`mlx.launch -n N --backend ring $(which mlxd) ...` starts the same ranks without this
supervision (it reports success even when a rank fails).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.2
RANK0_GRACE_SECONDS = 20.0
"""After a rank other than 0 died: how long rank 0 may take to end its requests."""
FOLLOWER_GRACE_SECONDS = 10.0
"""After rank 0 exited: how long the other ranks may take to see it and exit."""
TP_FLAGS = ("--tensor-parallel", "--tp-backend")
PEER_LOST_SIGNAL = signal.SIGUSR1
"""To rank 0: another rank exited (app/server/run.py)."""
PR_SET_PDEATHSIG = 1


def rank_argv(argv: list[str]) -> list[str]:
    """The server's arguments without the launcher's own flags."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in TP_FLAGS:
            skip = True
            continue
        if any(arg.startswith(flag + "=") for flag in TP_FLAGS):
            continue
        out.append(arg)
    return out


def default_backend() -> str:
    """NCCL where this host has NVIDIA GPUs, else the ring backend over loopback TCP."""
    return "nccl" if Path("/dev/nvidiactl").exists() else "ring"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def rank_envs(n: int, backend: str, workdir: Path) -> list[dict[str, str]]:
    base = dict(os.environ, MLXD_TENSOR_PARALLEL="1")  # a rank never launches again
    if backend == "ring":
        hostfile = workdir / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(n)]))
        return [dict(base, MLX_RANK=str(r), MLX_HOSTFILE=str(hostfile)) for r in range(n)]
    if backend == "nccl":
        port = free_ports(1)[0]
        return [dict(base, MLX_RANK=str(r), MLX_WORLD_SIZE=str(n), NCCL_HOST_IP="127.0.0.1",
                     NCCL_PORT=str(port), CUDA_VISIBLE_DEVICES=str(r)) for r in range(n)]
    raise ValueError(f"unknown tensor-parallel backend {backend!r} (ring or nccl)")


def launch(n: int, backend: str, argv: list[str]) -> int:
    """Run the group; the exit status for this process."""
    backend = default_backend() if backend == "auto" else backend
    with tempfile.TemporaryDirectory(prefix="mlxd-tp-") as tmp:
        envs = rank_envs(n, backend, Path(tmp))
        cmd = [sys.executable, "-m", "app", *rank_argv(argv)]
        # Each rank in a session of its own: a terminal's Ctrl-C reaches this process
        # only, which stops rank 0 gracefully instead of every rank at once.
        cores = rank_cores(n) if backend == "ring" else [None] * n
        procs = [subprocess.Popen(cmd, env=env, start_new_session=True,
                                  preexec_fn=partial(_start_rank, mine))
                 for env, mine in zip(envs, cores)]
        logger.info("tensor parallelism: %d ranks (%s backend), pids %s", n, backend,
                    [p.pid for p in procs])

        def forward(sig: int, frame: FrameType | None) -> None:
            if procs[0].poll() is None:
                procs[0].send_signal(signal.SIGTERM)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, forward)
        return _watch(procs)


def rank_cores(n: int) -> list[set[int] | None]:
    """Disjoint blocks of this process's cores, one per CPU rank: ranks on one host then
    do not oversubscribe the cores with their thread pools (OpenBLAS, numpy, MLX size
    them from the affinity). None (no pinning) with fewer cores than ranks."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is None:
        return [None] * n
    cores = sorted(affinity(0))
    per = len(cores) // n
    if per == 0:
        return [None] * n
    return [set(cores[r * per:(r + 1) * per]) for r in range(n)]


def _start_rank(cores: set[int] | None) -> None:
    """In the rank's process before exec: its cores, and (Linux) SIGTERM if this launcher
    dies, so no rank is left orphaned."""
    if cores is not None:
        os.sched_setaffinity(0, cores)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _watch(procs: list[subprocess.Popen[bytes]]) -> int:
    while True:
        for rank, p in enumerate(procs):
            code = p.poll()
            if code is None:
                continue
            if rank == 0:
                _wait_or_kill(procs[1:], FOLLOWER_GRACE_SECONDS)
                return code
            logger.critical("tensor-parallel rank %d exited with status %s; the group cannot "
                            "continue without it: stopping the server", rank, code)
            # Rank 0 may only learn it from a collective that fails (or, on a broken
            # ring, never completes): told now, it ends its streams without one.
            with contextlib.suppress(ProcessLookupError):
                procs[0].send_signal(PEER_LOST_SIGNAL)
            _wait_or_kill([procs[0]], RANK0_GRACE_SECONDS)
            _wait_or_kill(procs, FOLLOWER_GRACE_SECONDS)
            return 1
        time.sleep(POLL_SECONDS)


def _wait_or_kill(procs: list[subprocess.Popen[bytes]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
