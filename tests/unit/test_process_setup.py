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
