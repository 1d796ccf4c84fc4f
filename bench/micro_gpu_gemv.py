"""Few-row matmuls on the GPU: MLX's `x @ w.T` against app/accel/gpu/gemv.py.

    python3 bench/micro_gpu_gemv.py [--rows 1,2,4,8] [--calls 200]

The weight shapes of one Qwen3-8B layer and its LM head, bf16. Each figure is the median
over 5 runs of `--calls` back-to-back calls evaluated together (a decode step issues them
back to back too), as microseconds a call and the weight bytes read per second; the ratio
is MLX's time over ours (> 1: ours faster). One H200 reads at most ~4.8 TB/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlx.core as mx  # noqa: E402

from app.accel.gpu import gemv  # noqa: E402

SHAPES = {"q/o 4096x4096": (4096, 4096), "k/v 1024x4096": (1024, 4096),
          "gate/up 12288x4096": (12288, 4096), "down 4096x12288": (4096, 12288),
          "head 49152x4096": (49152, 4096)}


def per_call(fn: object, calls: int) -> float:
    def run() -> float:
        t0 = time.perf_counter()
        mx.eval([fn() for _ in range(calls)])  # type: ignore[operator]
        return (time.perf_counter() - t0) / calls
    run()
    return statistics.median(run() for _ in range(5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,8")
    parser.add_argument("--calls", type=int, default=200)
    cfg = parser.parse_args()
    print(f"device {mx.default_device()}\n")
    print("| weight | rows | MLX µs | ours µs | MLX GB/s | ours GB/s | MLX / ours |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (n, k) in SHAPES.items():
        w = (mx.random.normal((n, k)) * k ** -0.5).astype(mx.bfloat16)
        mx.eval(w)
        for rows in (int(r) for r in cfg.rows.split(",")):
            x = mx.random.normal((rows, k)).astype(mx.bfloat16)
            mx.eval(x)
            theirs = per_call(lambda x=x, w=w: x @ w.T, cfg.calls)
            ours = per_call(lambda x=x, w=w: gemv.rows_matmul(x, w), cfg.calls)
            gb = w.nbytes / 1e9
            print(f"| {name} | {rows} | {theirs * 1e6:.1f} | {ours * 1e6:.1f} | "
                  f"{gb / theirs:.0f} | {gb / ours:.0f} | {theirs / ours:.2f} |", flush=True)
        del w
    return 0


if __name__ == "__main__":
    sys.exit(main())
