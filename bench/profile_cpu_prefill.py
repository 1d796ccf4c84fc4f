"""Where a cold prefill of the default GGUF (SmolLM2-135M Q4_1, packed) spends its time.

    .venv/bin/python bench/profile_cpu_prefill.py [--reps 3] [--out profile-cpu-prefill.md]

1. A 1,033-token prompt in chunks of 512 (512 + 512 + 9, as the server's idle chunks), the model
   body only (the engine projects just the last row): the CPU wing as it is, against the
   same with its C prefill kernels turned off one by one (the quantized GEMM of
   native/qgemm.c: dequantize + sgemm instead; the causal attention of
   native/prefill_attention.c and the C SwiGLU: kernels.py's numpy/MLX path instead).
   Variants alternate within each repetition.
2. One 512-token chunk split into its linears, its attention and the rest (each part
   evaluated on its own, so the parts add up to a little more than the whole).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.accel.process import prepare_process  # noqa: E402

prepare_process()  # process tuning + BLAS before MLX

import mlx.core as mx  # noqa: E402
import mlx_lm.models.llama as mlx_lm_llama  # noqa: E402
from common import gguf_path, load_avg, write_report  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from app.accel.choose import accelerate_chat  # noqa: E402
from app.accel.cpu import kernels, quantized_prefill  # noqa: E402
from app.models.gguf import load_gguf  # noqa: E402
from app.settings import Settings  # noqa: E402

PROMPT_TOKENS = 1033
CHUNK = 512


@contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextmanager
def variant(name: str, model: Any) -> Iterator[None]:
    """`name` on `model`: every variant but "dequantize + sgemm" takes the quantized GEMM
    (whatever load chose, put back afterwards)."""
    chosen = model.model.layers[0].mlp.gate_proj.__dict__.get(quantized_prefill.GEMM_ATTR)
    quantized_prefill.use_gemm(model, name != "dequantize + sgemm")
    try:
        if name in ("all C kernels", "dequantize + sgemm"):
            yield
        elif name == "numpy attention":
            with patched(kernels, "causal_prefill_native", lambda *a: None):
                yield
        elif name == "MLX SwiGLU":
            with patched(kernels, "_swiglu_native", lambda *a: None):
                yield
        else:
            raise ValueError(name)
    finally:
        if chosen is not None:
            quantized_prefill.use_gemm(model, chosen)


VARIANTS = ("all C kernels", "dequantize + sgemm", "numpy attention", "MLX SwiGLU")


def cold_prompt(model: Any) -> float:
    tokens = [7 + (j * 13) % 900 for j in range(PROMPT_TOKENS)]
    cache = make_prompt_cache(model)
    t0 = time.perf_counter()
    for start in range(0, PROMPT_TOKENS, CHUNK):
        piece = tokens[start : start + CHUNK]
        mx.eval(model.model(mx.array([piece]), cache=cache)[:, -1])
    return time.perf_counter() - t0


def split_chunk(model: Any) -> dict[str, float]:
    """One chunk with its linears and its attention timed apart."""
    spent = {"linears": 0.0, "attention": 0.0}

    def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kw: Any) -> Any:
            mx.eval([a for a in args if isinstance(a, mx.array)])
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            mx.eval(out)
            spent[part] += time.perf_counter() - t0
            return out
        return run

    tokens = mx.array([[7 + (j * 13) % 900 for j in range(CHUNK)]])
    with patched(quantized_prefill, "_dense_matmul",
                 timed("linears", quantized_prefill._dense_matmul)), \
            patched(mlx_lm_llama, "scaled_dot_product_attention",
                    timed("attention", mlx_lm_llama.scaled_dot_product_attention)):
        cache = make_prompt_cache(model)
        t0 = time.perf_counter()
        mx.eval(model.model(tokens, cache=cache)[:, -1])
        total = time.perf_counter() - t0
    spent["rest"] = total - spent["linears"] - spent["attention"]
    spent["whole chunk"] = total
    return spent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default="profile-cpu-prefill.md")
    args = p.parse_args()
    loaded = load_gguf(gguf_path(), cpu_quantized=True)
    print(accelerate_chat(loaded, Settings()), flush=True)
    model = loaded.model
    cold_prompt(model)  # builds the kernels, fills the caches
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        for v in VARIANTS:
            with variant(v, loaded.model):
                times[v].append(cold_prompt(model))
        print(f"rep {rep}: " + ", ".join(f"{v} {times[v][-1]:.2f} s" for v in VARIANTS),
              flush=True)
    parts = [split_chunk(model) for _ in range(args.reps)]
    base = statistics.median(times[VARIANTS[0]])
    lines = ["# Cold prefill of SmolLM2-135M Q4_1 on the CPU, by kernel", "",
             f"`bench/profile_cpu_prefill.py --reps {args.reps}` · "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')} · load avg {load_avg()} · "
             f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}", "",
             f"A {PROMPT_TOKENS}-token prompt in chunks of {CHUNK}, the model body only; "
             "median of the repetitions (variants alternated), min-max in brackets.", "",
             "| variant | seconds | / all C kernels |", "|---|---|---|"]
    for v in VARIANTS:
        t = times[v]
        lines.append(f"| {v} | {statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f}) | "
                     f"{statistics.median(t) / base:.2f}x |")
    lines += ["", f"One {CHUNK}-token chunk by part (all C kernels), ms:", "",
              "| part | ms |", "|---|---|"]
    for part in ("linears", "attention", "rest", "whole chunk"):
        lines.append(f"| {part} | {statistics.median(x[part] for x in parts) * 1e3:.0f} |")
    print("\n".join(lines))
    print(f"written to {write_report(args.out, chr(10).join(lines) + chr(10))}")


if __name__ == "__main__":
    main()
