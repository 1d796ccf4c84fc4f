"""In-process measurements behind app/accel/cpu/panels.py, llama_decoder.py and the Whisper
numpy decoder: decode steps through MLX against numpy with panel matmuls.

    .venv/bin/python bench/micro_cpu_decode.py [--reps 3] [--out micro-cpu-decode.md]

1. Few-row matmuls: one sgemm (MLX) against `PanelMatmul`, for SmolLM2's batch-8 MLP
   and vocabulary projection and Whisper tiny.en's 5-beam logits projection.
2. SmolLM2-135M float32 (the bench's folder): one decode step of a left-padded batch of
   1, 4 and 8 rows with ~200 cached tokens, mlx-lm's forward against `CpuLlamaDecoder`.
3. Whisper tiny.en: one 5-beam decoder step over a 30 s window (hidden states and
   logits), the MLX decoder against `CpuTextDecoder`.
Modes alternate within each repetition, so the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.accel.process import prepare_process  # noqa: E402

prepare_process()  # process tuning + BLAS before MLX

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from bench_transcribe import default_model  # noqa: E402
from common import ensure_hf_folder, load_avg, write_report  # noqa: E402
from micro_timing import pair_table, timed  # noqa: E402
from mlx_lm.models.cache import BatchKVCache  # noqa: E402

from app.accel.cpu import mlx_lm_patch  # noqa: E402
from app.accel.cpu.llama_decoder import CpuLlamaDecoder  # noqa: E402
from app.accel.cpu.panels import PanelMatmul  # noqa: E402
from app.accel.cpu.whisper_decoder import NumpyTextDecoder  # noqa: E402
from app.accel.cpu.whisper_ops import Projection  # noqa: E402
from app.models.hf import load_hf  # noqa: E402

Pair = tuple[Callable[[], object], Callable[[], object]]  # (MLX, numpy)
CALLS = 15  # timed calls per case and repetition (median)


def _matmul_pair(rows: int, n_in: int, n_out: int, rng: np.random.Generator) -> Pair:
    w = rng.standard_normal((n_in, n_out), dtype=np.float32)
    x = rng.standard_normal((rows, n_in), dtype=np.float32)
    w_mx, x_mx = mx.array(np.ascontiguousarray(w.T)), mx.array(x)  # MLX keeps [out, in]
    panels = PanelMatmul(w, max_rows=rows)
    return (lambda: mx.eval(x_mx @ w_mx.T), lambda: panels(x))


def matmul_cases() -> dict[str, Pair]:
    rng = np.random.default_rng(0)
    return {name: _matmul_pair(rows, n_in, n_out, rng)
            for name, rows, n_in, n_out in [("SmolLM2 gate+up, 8 rows", 8, 576, 3072),
                                            ("SmolLM2 vocab, 8 rows", 8, 576, 49152),
                                            ("tiny.en vocab, 5 beams", 5, 384, 51864)]}


def _llama_pair(model: Any, dec: CpuLlamaDecoder, b: int) -> Pair:
    lens = [200 + 7 * i for i in range(b)]

    def batch() -> list[BatchKVCache]:
        caches = [BatchKVCache([max(lens) - n for n in lens]) for _ in model.layers]
        tokens = mx.array([[0] * (max(lens) - n) + [7 + (i * 13 + j) % 900 for j in range(n)]
                           for i, n in enumerate(lens)])
        mx.eval(model(tokens, cache=caches)[:, -1])
        return caches

    ref, ours = batch(), batch()
    tokens = np.arange(5, 5 + b)
    tokens_mx = mx.array(tokens)[:, None]
    # each call appends a position; 3 x 16 calls stay far from the context end
    return (lambda: mx.eval(model(tokens_mx, cache=ref)[:, -1]),
            lambda: dec.step(tokens, ours))


def llama_cases() -> dict[str, Pair]:
    model = load_hf(ensure_hf_folder()).model
    mlx_lm_patch.install()
    dec = CpuLlamaDecoder.build(model)
    assert dec is not None
    return {f"SmolLM2 decode step, batch {b}": _llama_pair(model, dec, b) for b in (1, 4, 8)}


def whisper_cases() -> dict[str, Pair]:
    from app.models.whisper import load_whisper

    model = load_whisper(default_model()).model
    kv = model.encode(mx.random.normal((1, 80, 3000)))
    mx.eval(kv)
    model.store_decoder_input_major()  # as app.accel.choose does on the CPU
    cpu = NumpyTextDecoder(model, Projection(model.decoder.token_embedding.weight))
    cross = cpu.cross(kv)
    assert cross is not None
    start = [50257, 50362, 50363]
    _, mlx_cache = model.decoder.hidden(mx.array([start] * 5), kv, None)
    cache = cpu.empty_cache(5)
    cpu.logits(np.array([start] * 5), cross, cache)
    step = np.array([[440]] * 5)

    def mlx_step() -> None:
        hidden, _ = model.decoder.hidden(mx.array(step), kv, mlx_cache)
        mx.eval(model.decoder.logits(hidden))

    def numpy_step() -> None:
        cache.length = len(start)  # rewrite the same position every call
        cpu.logits(step, cross, cache)

    return {"tiny.en decoder step, 5 beams": (mlx_step, numpy_step)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="micro-cpu-decode.md")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    cases = {**matmul_cases(), **llama_cases(), **whisper_cases()}
    results: dict[str, dict[str, list[float]]] = {k: {"mlx": [], "numpy": []} for k in cases}
    for rep in range(args.reps):
        for name, (mlx_fn, np_fn) in cases.items():
            # mx.eval in timed() passes numpy results and None through untouched
            results[name]["mlx"].append(timed(mlx_fn, CALLS) * 1e3)
            results[name]["numpy"].append(timed(np_fn, CALLS) * 1e3)
            print(f"rep {rep}: {name}: MLX {results[name]['mlx'][-1]:.2f} ms, "
                  f"numpy {results[name]['numpy'][-1]:.2f} ms", flush=True)
    lines = ["# Decode steps on the CPU: MLX against numpy panel matmuls", "",
             f"`bench/micro_cpu_decode.py --reps {args.reps}` · "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')} · load avg {load_avg()} · "
             f"mlx {mx.__version__} · numpy {np.__version__}", "",
             f"Milliseconds, median of {CALLS} calls per repetition; the table gives the median "
             "over repetitions (modes alternated).", "",
             *pair_table(results, "mlx", "numpy", ("MLX (sgemm)", "numpy panels"))]
    print("\n".join(lines))
    print(f"written to {write_report(args.out, chr(10).join(lines) + chr(10))}")


if __name__ == "__main__":
    main()
