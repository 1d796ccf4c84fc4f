"""Which kernels OpenBLAS runs: its own CPU detection, checked against the CPU's flags.

OpenBLAS's DYNAMIC_ARCH builds pick a kernel set ("core type") from the CPU model at
load. Debian's 0.3.21 does not know every model: on an Intel family 6 model 207 box it
fell back to its generic "Prescott" kernels (a 1024² float32 matmul through MLX at 29
GFLOP/s against 245 with SkylakeX's), while other boxes of the same class detected fine.
So the detection is probed in a child process (it happens when the library loads, so it
cannot be redone in this one) and, where it chose kernels weaker than the CPU's flags
allow, `OPENBLAS_CORETYPE` is set to the flags' choice before the library is loaded,
once that choice is probed to be one this OpenBLAS knows.

An `OPENBLAS_CORETYPE` that is already set is never touched: some machines set it on
purpose, because older OpenBLAS builds crash or compute wrong results there. The AMX
kernels (SapphireRapids) are never chosen: VMs list `amx_tile` and fault on it, and
OpenBLAS's float32 GEMM is Cooperlake's there anyway.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CORE_TYPE_ENV = "OPENBLAS_CORETYPE"
CPUINFO = Path("/proc/cpuinfo")
# OpenBLAS's x86-64 core names by the width of what their kernels use; equal ranks are
# the same kernels for float32 GEMM.
CORE_RANK = {
    "Prescott": 0, "Core2": 1, "Penryn": 1, "Dunnington": 1, "Atom": 1, "Nehalem": 2,
    "Barcelona": 2, "Bobcat": 2, "Sandybridge": 3, "Bulldozer": 3, "Piledriver": 3,
    "Steamroller": 3, "Excavator": 3, "Haswell": 4, "Zen": 4, "SkylakeX": 5,
    "Cooperlake": 6, "SapphireRapids": 6,
}
AVX512_CORE = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
PROBE_TIMEOUT_S = 20.0
# Loads the library in a fresh interpreter (no site packages) and prints its core name.
PROBE = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
         "lib.openblas_get_corename.restype = ctypes.c_char_p; "
         "print(lib.openblas_get_corename().decode())")

Probe = Callable[[str | None], "str | None"]
"""core type to force (None: OpenBLAS's own detection) -> the core the library then runs."""


@dataclass(slots=True, frozen=True)
class CoreChoice:
    set_to: str | None
    """The OPENBLAS_CORETYPE to set before loading, or None to leave the environment."""
    reason: str
    """For the runtime log line."""


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first processor's feature flags from /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def core_for_flags(flags: frozenset[str]) -> str:
    """The strongest core type whose float32 kernels these x86-64 flags run."""
    if flags >= AVX512_CORE:
        return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    if "avx" in flags:
        return "Sandybridge"
    if "sse4_2" in flags:
        return "Nehalem"
    return "Prescott"


def choose(env_value: str | None, flags: frozenset[str], probe: Probe) -> CoreChoice:
    """What to do about OPENBLAS_CORETYPE, given the environment, the CPU's flags and a
    way to ask a fresh OpenBLAS which core it runs."""
    wanted = core_for_flags(flags) if flags else None
    if env_value:
        hint = "" if wanted is None or CORE_RANK.get(env_value, 99) >= CORE_RANK[wanted] \
            else f"; the CPU's flags allow {wanted}"
        return CoreChoice(None, f"{CORE_TYPE_ENV}={env_value} from the environment{hint}")
    if wanted is None:
        return CoreChoice(None, "OpenBLAS's own detection (no CPU flags to check it)")
    detected = probe(None)
    if detected is None:
        return CoreChoice(None, "OpenBLAS's own detection (probe failed)")
    if CORE_RANK.get(detected, -1) >= CORE_RANK[wanted]:
        return CoreChoice(None, f"detected by OpenBLAS as {detected}")
    if probe(wanted) != wanted:
        return CoreChoice(None, f"detected by OpenBLAS as {detected}; this build has no "
                                f"{wanted} kernels")
    return CoreChoice(wanted, f"{wanted} from the CPU flags (OpenBLAS detected {detected})")


def subprocess_probe(library: str) -> Probe:
    def probe(core: str | None) -> str | None:
        env = {k: v for k, v in os.environ.items() if k != CORE_TYPE_ENV}
        if core is not None:
            env[CORE_TYPE_ENV] = core
        try:
            out = subprocess.run([sys.executable, "-S", "-I", "-c", PROBE, library], env=env,
                                 capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                                 check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("probing OpenBLAS's core type failed: %s", exc)
            return None
        return out.stdout.strip() or None

    return probe


def choose_for(library: str) -> CoreChoice:
    """`choose` on this machine (x86-64 Linux; elsewhere the environment is left alone)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return CoreChoice(None, "OpenBLAS's own detection")
    try:
        flags = cpu_flags(CPUINFO.read_text())
    except OSError:
        flags = frozenset()
    return choose(os.environ.get(CORE_TYPE_ENV), flags, subprocess_probe(library))
