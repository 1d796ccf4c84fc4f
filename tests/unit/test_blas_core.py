"""OpenBLAS's core type checked against recorded CPU flag sets (app/accel/cpu/blas_core.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.accel.cpu import blas_core
from app.accel.cpu.blas import OPENBLAS_CANDIDATES

AVX512 = "avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"
FLAG_SETS = {
    # Intel family 6 model 207 (Emerald Rapids), as a VM lists it: AMX it may not use
    "intel-emerald-rapids": f"{BASE} avx avx2 fma {AVX512} avx512_bf16 amx_tile amx_bf16 amx_int8",
    # AMD EPYC family 26 (Zen 5), the CI machine of this project
    "amd-zen5": f"{BASE} avx avx2 fma {AVX512} avx512_bf16 avx512_vp2intersect",
    "amd-zen3": f"{BASE} avx avx2 fma sse4a",
    "intel-skylake-sp": f"{BASE} avx avx2 fma {AVX512}",
    "intel-haswell": f"{BASE} avx avx2 fma",
    "intel-sandy-bridge": f"{BASE} avx",
    "intel-nehalem": BASE,
    "qemu-generic": "fpu sse sse2",
}
EXPECTED = {
    "intel-emerald-rapids": "Cooperlake", "amd-zen5": "Cooperlake", "amd-zen3": "Haswell",
    "intel-skylake-sp": "SkylakeX", "intel-haswell": "Haswell",
    "intel-sandy-bridge": "Sandybridge", "intel-nehalem": "Nehalem",
    "qemu-generic": "Prescott",
}


def flags(name: str) -> frozenset[str]:
    text = f"processor\t: 0\nvendor_id\t: X\nflags\t\t: {FLAG_SETS[name]}\n\nprocessor\t: 1\n"
    return blas_core.cpu_flags(text)


@pytest.mark.parametrize("name", sorted(FLAG_SETS))
def test_core_for_recorded_flags(name: str) -> None:
    assert blas_core.core_for_flags(flags(name)) == EXPECTED[name]


class FakeOpenBLAS:
    """Answers probes like a build that detects `detected` and knows `known` cores."""

    def __init__(self, detected: str | None, known: set[str]) -> None:
        self.detected, self.known, self.calls = detected, known, []

    def __call__(self, core: str | None) -> str | None:
        self.calls.append(core)
        if core is None:
            return self.detected
        return core if core in self.known else self.detected


def test_generic_detection_is_raised_to_what_the_flags_allow() -> None:
    lib = FakeOpenBLAS("Prescott", {"Haswell", "SkylakeX", "Cooperlake"})
    choice = blas_core.choose(None, flags("intel-emerald-rapids"), lib)
    assert choice.set_to == "Cooperlake" and "detected Prescott" in choice.reason


def test_a_good_detection_is_kept() -> None:
    for name, detected in (("amd-zen3", "Zen"), ("amd-zen5", "Cooperlake"),
                           ("intel-haswell", "Haswell")):
        lib = FakeOpenBLAS(detected, {"Haswell", "SkylakeX", "Cooperlake", "Zen"})
        assert blas_core.choose(None, flags(name), lib).set_to is None
        assert lib.calls == [None]


def test_a_core_the_build_lacks_is_not_forced() -> None:
    lib = FakeOpenBLAS("Haswell", {"Haswell", "SkylakeX"})  # an OpenBLAS before Cooperlake
    choice = blas_core.choose(None, flags("amd-zen5"), lib)
    assert choice.set_to is None and "no Cooperlake kernels" in choice.reason


def test_an_explicit_environment_value_is_never_overridden() -> None:
    lib = FakeOpenBLAS("Prescott", {"Cooperlake"})
    choice = blas_core.choose("Haswell", flags("intel-emerald-rapids"), lib)
    assert choice.set_to is None and "from the environment" in choice.reason
    assert "flags allow Cooperlake" in choice.reason  # said, not done
    assert lib.calls == []
    same = blas_core.choose("SkylakeX", flags("intel-skylake-sp"), lib)
    assert same.reason == "OPENBLAS_CORETYPE=SkylakeX from the environment"


def test_a_failed_probe_changes_nothing() -> None:
    assert blas_core.choose(None, flags("amd-zen5"), FakeOpenBLAS(None, set())).set_to is None


OPENBLAS = next((p for p in OPENBLAS_CANDIDATES if Path(p).exists() and "x86_64" in p), None)


@pytest.mark.skipif(OPENBLAS is None, reason="needs Debian's OpenBLAS (x86-64)")
def test_the_probe_reads_a_real_openblas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(blas_core.CORE_TYPE_ENV, "Haswell")  # the probe ignores it
    probe = blas_core.subprocess_probe(str(OPENBLAS))
    assert probe(None) in blas_core.CORE_RANK
    assert probe("Sandybridge") == "Sandybridge"
    assert os.environ[blas_core.CORE_TYPE_ENV] == "Haswell"
