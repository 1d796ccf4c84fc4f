"""Process set-up is an explicit call: importing the server's modules changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.harness import ROOT

PROBE = """
import os, sys
import app.main, app.engine.engine, app.serving.chat
maps = open("/proc/self/maps").read() if sys.platform.startswith("linux") else ""
print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "openblas-pthread" in maps)
"""


def test_importing_the_server_sets_nothing_up() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["None", "False"]


def test_mlx_lm_import_does_not_lower_the_fd_limits() -> None:
    """mlx-lm's utils sets RLIMIT_NOFILE to (2048, 4096) on import; after prepare_process
    the limits the process started with are still there."""
    code = ("import resource; before = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "from app.accel.process import prepare_process; prepare_process(); "
            "import mlx_lm.utils; after = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "assert after[1] >= before[1] and after[0] >= min(before[0], 2048), (before, after); "
            "print(before, after)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
