"""The CPU kernels' other instruction-set paths on this machine: the kernel tests again in a
process whose kernels are built for an older x86 target (MLXD_NATIVE_MARCH), so an AVX-512
machine also runs the AVX2 paths (float and int8 activations, the prefill without the
AVX-512 GEMM and attention) and the plain-C one."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from app.accel.cpu import native

ROOT = Path(__file__).resolve().parents[2]
KERNEL_TESTS = ["tests/engine/test_quantized_kernels.py", "tests/engine/test_llama_decoder.py",
                "tests/unit/test_cpu_kernels.py"]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or native._compiler() is None,
                    reason="x86 targets need an x86 machine with a C compiler")
@pytest.mark.parametrize(("march", "isa", "int8"), [("haswell", 256, 256), ("x86-64", 0, 0)])
def test_kernel_tests_pass_built_for(march: str, isa: int, int8: int, tmp_path: Path) -> None:
    if march == "haswell" and "avx2" not in native._cpu_flags().split():
        pytest.skip("this CPU has no AVX2")
    env = {**os.environ, native.MARCH_ENV: march, "MLXD_NATIVE_CACHE": str(tmp_path)}
    probe = subprocess.run(
        [sys.executable, "-c", "from app.accel.cpu import native; lib = native.library(); "
         "print(lib.qmatmul_isa(), lib.qmatmul_int8())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert probe.stdout.split() == [str(isa), str(int8)], probe.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          *KERNEL_TESTS], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    tail = run.stdout[-3000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert " passed" in run.stdout and " failed" not in run.stdout, tail
    if int8:  # the int8 cases ran, not skipped for want of a kernel
        assert "no int8 kernel" not in run.stdout, tail
