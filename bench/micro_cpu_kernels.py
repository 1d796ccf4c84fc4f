"""In-process measurements behind app/accel/cpu/kernels.py and app/accel/cpu/process.py.

    .venv/bin/python bench/micro_cpu_kernels.py [--out micro-cpu-kernels.md]

1. ns per element of MLX's exp/softmax/SwiGLU/GELU against the polynomial-exp kernels
   (and numpy's SIMD exp for scale), small and large, each measured in a child process with
   the glibc malloc tuning on and off (MLXD_CPU_TUNING=0).
2. SmolLM2-135M (the bench's float32 folder): a 1k-token prefill in two 512 chunks, 30 new
   tokens over a 1.1k cached prefix (a turn-N prefill), the last 512-token chunk of a 4k
   prompt, and one batch-8 decode step, with mlx-lm's own attention/SwiGLU, with ours, and
   with ours in blocks sized by memory alone (which skip few causal keys); alternated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.accel.process import prepare_process  # noqa: E402

prepare_process()  # process tuning + BLAS before MLX

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402
from common import ensure_hf_folder, load_avg, write_report  # noqa: E402
from micro_timing import timed  # noqa: E402
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache  # noqa: E402

from app.accel.cpu import kernels as cpu_kernels  # noqa: E402
from app.accel.cpu import mlx_lm_patch  # noqa: E402
from app.engine import forward  # noqa: E402
from app.models.hf import load_hf  # noqa: E402

CAUSAL_ROWS = cpu_kernels.CAUSAL_BLOCK_ROWS

SIZES = {"300k": (3, 3, 30, 1130), "4.7M": (1, 3, 3, 512, 1024)}


def _cases(x: mx.array, g: mx.array) -> dict[str, Callable[[], mx.array]]:
    return {
        "mx.exp": lambda: mx.exp(x),
        "fast_exp": lambda: cpu_kernels.fast_exp(x),
        "mx.softmax": lambda: mx.softmax(x, axis=-1),
        "softmax": lambda: cpu_kernels.softmax(x),
        "silu*x": lambda: nn.silu(g) * x,
        "swiglu": lambda: cpu_kernels.swiglu(g, x),
        "nn.gelu": lambda: nn.gelu(x),
        "gelu": lambda: cpu_kernels.gelu(x),
    }


def elementwise() -> dict[str, float]:
    """ns per element, one process (its malloc tuning decided by the environment)."""
    out: dict[str, float] = {}
    for label, shape in SIZES.items():
        x = mx.random.normal(shape, key=mx.random.key(0)) * 5
        g = mx.random.normal(shape, key=mx.random.key(1))
        mx.eval(x, g)
        n = x.size
        xs = np.array(x)
        t0 = time.perf_counter()
        for _ in range(10):
            np.exp(xs)
        out[f"numpy exp {label}"] = (time.perf_counter() - t0) / 10 / n * 1e9
        for name, fn in _cases(x, g).items():
            out[f"{name} {label}"] = timed(fn, 10) / n * 1e9
    return out


def model_level(reps: int) -> list[dict[str, float]]:
    model = load_hf(ensure_hf_folder()).model
    x = mx.array([[7 + j % 900 for j in range(1024)]])
    base = make_prompt_cache(model)
    mx.eval(forward.prefill(model, x, base, mx.array([1023])))
    state = [c.state for c in base]
    long_x = mx.array([[7 + j % 900 for j in range(4096)]])
    long_base = make_prompt_cache(model)
    for start in range(0, 3584, 512):
        forward.prefill(model, long_x[:, start : start + 512], long_base, None)
        mx.eval([c.state for c in long_base])
    long_state = [c.state for c in long_base]
    new = mx.array([[11 + j for j in range(30)]])
    lens = [200 + i % 3 for i in range(8)]

    def prefill_1k() -> None:
        cache = make_prompt_cache(model)
        forward.prefill(model, x[:, :512], cache, None)
        mx.eval([c.state for c in cache])
        mx.eval(forward.prefill(model, x[:, 512:], cache, mx.array([511])))

    def turn_n() -> None:
        cache = make_prompt_cache(model)
        for c, s in zip(cache, state, strict=True):
            c.state = s
        mx.eval(forward.prefill(model, new, cache, mx.array([29])))

    def last_chunk_4k() -> None:
        cache = make_prompt_cache(model)
        for c, s in zip(cache, long_state, strict=True):
            c.state = s
        mx.eval(forward.prefill(model, long_x[:, 3584:], cache, mx.array([511])))

    def decode_b8() -> float:
        cache = [BatchKVCache([max(lens) - n for n in lens]) for _ in model.layers]
        tokens = mx.array([[0] * (max(lens) - n) + [7 + (i * 13 + j) % 900 for j in range(n)]
                           for i, n in enumerate(lens)])
        mx.eval(model(tokens, cache=cache)[:, -1])
        step = mx.array([[5]] * 8)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            mx.eval(model(step, cache=cache)[:, -1].argmax(-1))
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    rows = []
    for _ in range(reps):
        for mode in ("mlx-lm", "ours", "ours-big-blocks"):
            mlx_lm_patch.install() if mode.startswith("ours") else mlx_lm_patch.uninstall()
            # big blocks: query blocks sized by BLOCK_SCORES alone, as before the causal
            # skip; a block then spans a whole chunk wherever it fits, skipping nothing
            cpu_kernels.CAUSAL_BLOCK_ROWS = 1 << 30 if mode == "ours-big-blocks" else CAUSAL_ROWS
            rows.append({"mode": mode, "prefill_1k": timed(lambda: prefill_1k() or mx.array(0), 3),
                         "turn_n": timed(lambda: turn_n() or mx.array(0), 5),
                         "chunk_4k": timed(lambda: last_chunk_4k() or mx.array(0), 1),
                         "decode_b8": decode_b8()})
            print(f"  {mode}: {rows[-1]}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="micro-cpu-kernels.md")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(elementwise()))
        return
    runs = {}
    for tuning in ("1", "0"):
        env = {**os.environ, "MLXD_CPU_TUNING": tuning}
        res = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                             capture_output=True, text=True)
        runs[tuning] = json.loads(res.stdout.strip().splitlines()[-1])
    rows = model_level(args.reps)

    lines = ["# CPU kernels and process tuning (in-process micro-benchmarks)", "",
             f"`bench/micro_cpu_kernels.py` · {time.strftime('%Y-%m-%d %H:%M:%S')} · "
             f"load avg {load_avg()} · mlx {mx.__version__}", "",
             "## ns per float32 element (median of 10)", "",
             "| op | malloc tuned | glibc defaults |", "|---|---|---|"]
    for key in runs["1"]:
        lines.append(f"| {key} | {runs['1'][key]:.2f} | {runs['0'][key]:.2f} |")
    lines += ["", "300k: [3, 3, 30, 1130] (turn-N attention scores); 4.7M: [1, 3, 3, 512, 1024] "
              "(a 512-token chunk's scores over 1k keys). Ours: `app/accel/cpu/kernels.py`.", "",
              "## SmolLM2-135M float32, seconds (median per rep; modes alternated)", "",
              "| mode | 1k prefill (2 x 512) | 30 new tokens over 1.1k cache "
              "| last 512 of a 4k prompt | batch-8 decode step |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['prefill_1k']:.3f} | {r['turn_n']:.3f} | "
                     f"{r['chunk_4k']:.2f} | {r['decode_b8']:.4f} |")
    for key in ("prefill_1k", "turn_n", "chunk_4k", "decode_b8"):
        base = statistics.median(r[key] for r in rows if r["mode"] == "mlx-lm")
        ours = statistics.median(r[key] for r in rows if r["mode"] == "ours")
        unskipped = statistics.median(r[key] for r in rows if r["mode"] == "ours-big-blocks")
        lines.append(f"\n{key}: mlx-lm / ours = {base / ours:.2f}x, "
                     f"ours in big blocks / ours = {unskipped / ours:.2f}x")
    print("\n".join(lines))
    print(f"written to {write_report(args.out, chr(10).join(lines) + chr(10))}")


if __name__ == "__main__":
    main()
