"""A short prefill at a new length on the GPU: MLX's attention against the GPU wing's.

    python3 bench/micro_gpu_prefill.py --model bench/out/random-qwen3-0.6b [--prefix 1400]

Turn 2 of a conversation prefills a few new tokens over a cached prefix, and nearly every
request brings a new pair of (new tokens, cached tokens). MLX's CUDA attention gives each
such pair to cuDNN, which builds a graph per shape (app/accel/gpu/prefill_attention.py);
the GPU wing computes short prefills with plain MLX ops instead. For each new length this
times the prefill through MLX's attention (first at that shape, then again: the difference
is the graph build) and through the wing's, on one cached prefix (trimmed back after each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.accel.process import prepare_process  # noqa: E402

prepare_process()

import mlx.core as mx  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from app.accel.gpu import patch as gpu_patch  # noqa: E402
from app.models.hf import load_hf  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prefix", type=int, default=1400)
    parser.add_argument("--lengths", default="17,19,23,29,31,37,41")
    cfg = parser.parse_args()
    model = load_hf(cfg.model).model
    cache = make_prompt_cache(model)
    tokens = mx.random.randint(3, 1000, (1, cfg.prefix + 64), key=mx.random.key(0))
    mx.eval(model(tokens[:, :cfg.prefix], cache=cache)[:, -1])

    def prefill(n: int) -> float:
        t0 = time.perf_counter()
        mx.eval(model(tokens[:, cfg.prefix:cfg.prefix + n], cache=cache)[:, -1])
        elapsed = time.perf_counter() - t0
        for c in cache:
            c.trim(n)
        return elapsed

    print(f"device {mx.default_device()} · {cfg.model.name} · prefix {cfg.prefix}\n")
    print("| new tokens | MLX, first at this shape (ms) | MLX, again (ms) | GPU wing (ms) |")
    print("|---:|---:|---:|---:|")
    for n in (int(x) for x in cfg.lengths.split(",")):
        gpu_patch.PATCH.uninstall()
        first, again = prefill(n), prefill(n)
        gpu_patch.PATCH.install()
        ours = min(prefill(n), prefill(n))
        print(f"| {n} | {first * 1e3:.1f} | {again * 1e3:.1f} | {ours * 1e3:.1f} |", flush=True)
    gpu_patch.PATCH.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
