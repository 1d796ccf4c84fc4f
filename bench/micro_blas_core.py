"""float32 GEMM through MLX under each OpenBLAS core type (app/accel/cpu/blas_core.py).

    .venv/bin/python bench/micro_blas_core.py [--cores detected,Haswell,SkylakeX,Cooperlake]

Each core type runs in a child process (OpenBLAS picks its kernels when it loads), with
OPENBLAS_CORETYPE set for it or unset for "detected", alternated over the repetitions.
Shapes: a square 1024 matmul and the prefill matmuls of SmolLM2 (512-token chunk by the
576-wide hidden state: q/k/v-sized, MLP in/out, vocabulary projection).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import load_avg, write_report

SHAPES = ((1024, 1024, 1024), (512, 576, 1536), (512, 1536, 576), (512, 576, 49152))
LIBRARY = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
CHILD = """
import ctypes, json, sys, time
lib = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
lib.openblas_get_corename.restype = ctypes.c_char_p
import mlx.core as mx
out = {"core": lib.openblas_get_corename().decode()}
for m, k, n in json.loads(sys.argv[2]):
    a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
    mx.eval(a, b)
    for _ in range(3):
        mx.eval(a @ b)
    reps = max(3, int(2e10 / (2 * m * k * n)))
    t = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    out[f"{m}x{k}x{n}"] = 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9
print(json.dumps(out))
"""


def run(core: str) -> dict[str, float | str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if core != "detected":
        env["OPENBLAS_CORETYPE"] = core
    out = subprocess.run([sys.executable, "-c", CHILD, LIBRARY, json.dumps(SHAPES)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", default="detected,Haswell,SkylakeX,Cooperlake")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default="micro-blas-core.md")
    args = p.parse_args()
    cores = args.cores.split(",")
    best: dict[str, dict[str, float]] = {c: {} for c in cores}
    names: dict[str, str] = {}
    for rep in range(args.reps):
        for core in cores if rep % 2 == 0 else cores[::-1]:
            res = run(core)
            names[core] = str(res.pop("core"))
            for shape, gflops in res.items():
                best[core][shape] = max(best[core].get(shape, 0.0), float(gflops))
            print(f"rep {rep} {core} ({names[core]}): " +
                  ", ".join(f"{s} {g:.0f}" for s, g in best[core].items()), flush=True)
    shapes = [f"{m}x{k}x{n}" for m, k, n in SHAPES]
    lines = ["# float32 GEMM through MLX by OpenBLAS core type", "",
             f"`bench/micro_blas_core.py --cores {args.cores} --reps {args.reps}` · "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')} · load avg {load_avg()} · "
             f"machine OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}",
             "", "GFLOP/s, best of the repetitions (M x K x N).", "",
             "| OPENBLAS_CORETYPE | core in use | " + " | ".join(shapes) + " |",
             "|---|---|" + "---|" * len(shapes)]
    for core in cores:
        lines.append(f"| {core} | {names[core]} | " +
                     " | ".join(f"{best[core][s]:.0f}" for s in shapes) + " |")
    path = write_report(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\nwritten to {path}")


if __name__ == "__main__":
    main()
