"""In-process measurements behind app/accel/cpu/quantized.py and quantized_prefill.py: the
default GGUF (SmolLM2-135M Q4_1) widened to float32 at load against kept packed.

    .venv/bin/python bench/micro_cpu_quantized.py [--reps 3] [--int8] [--out FILE]

1. One decode step of a left-padded batch of 1, 4 and 8 rows with ~200 cached tokens:
   `CpuLlamaDecoder` over float32 panels against the same decoder over the C kernels.
2. One 512-token prefill chunk through mlx-lm: float32 sgemm against dequantize + sgemm.
3. Bytes of weights the model holds.
`--int8` adds packed weights with int8 activations (`cpu_int8_activations`) as a third mode;
`--loop` the packed decoder's per-layer Python loop (what native/step.c replaced) as one more.
`--prefetch` instead: the packed path against itself with qmatmul.c's weight prefetching off
(decode steps only).
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
from common import gguf_path, load_avg, write_report  # noqa: E402
from micro_timing import pair_table, timed  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache  # noqa: E402

from app.accel.choose import accelerate_chat  # noqa: E402
from app.accel.cpu import native  # noqa: E402
from app.models.gguf import load_gguf  # noqa: E402
from app.settings import Settings  # noqa: E402

CALLS = 15
MODES = ["float32", "quantized"]


def _step(model: Any, dec: Any, b: int) -> Callable[[], object]:
    lens = [200 + 7 * i for i in range(b)]
    caches = [BatchKVCache([max(lens) - n for n in lens]) for _ in model.layers]
    tokens = mx.array([[0] * (max(lens) - n) + [7 + (i * 13 + j) % 900 for j in range(n)]
                       for i, n in enumerate(lens)])
    mx.eval(model(tokens, cache=caches)[:, -1])
    step = np.arange(5, 5 + b)
    return lambda: dec.step(step, caches)


def _prefill(model: Any) -> Callable[[], object]:
    tokens = mx.array([[7 + (j * 13) % 900 for j in range(512)]])

    def run() -> object:
        cache = make_prompt_cache(model)
        return model.model(tokens, cache=cache)[:, -1]
    return run


def _without_prefetch(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` with qmatmul.c's weight prefetching off for the call."""
    lib = native.library()
    assert lib is not None

    def run() -> object:
        ahead = lib.qmatmul_prefetch(0)
        try:
            return fn()
        finally:
            lib.qmatmul_prefetch(ahead)
    return run


def cases() -> tuple[dict[str, dict[str, Callable[[], object]]], dict[str, int]]:
    out: dict[str, dict[str, Callable[[], object]]] = {}
    weights = {}
    for mode in MODES:
        loaded = load_gguf(gguf_path(), cpu_quantized=mode != "float32")
        settings = Settings(cpu_int8_activations=mode == "int8")
        print(f"{mode}: {accelerate_chat(loaded, settings)}", flush=True)
        model, dec = loaded.model, loaded.decode_step
        assert dec is not None
        if mode == "loop":
            dec._fused = None  # type: ignore[attr-defined]
        weights[mode] = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        wrap = _without_prefetch if mode == "no prefetch" else (lambda fn: fn)
        for b in (1, 4, 8):
            out.setdefault(f"decode step, batch {b}", {})[mode] = wrap(_step(model, dec, b))
        if "float32" in MODES:
            out.setdefault("prefill, 512-token chunk", {})[mode] = wrap(_prefill(model))
    return out, weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="micro-cpu-quantized.md")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--int8", action="store_true", help="a third mode: int8 activations")
    p.add_argument("--loop", action="store_true", help="a mode: the per-layer Python loop")
    p.add_argument("--prefetch", action="store_true",
                   help="a mode: the packed path without the kernels' weight prefetching")
    args = p.parse_args()
    if args.int8:
        MODES.append("int8")
    if args.loop:
        MODES.append("loop")
    if args.prefetch:  # alone: the packed path with and without, decode steps only
        MODES[:] = ["quantized", "no prefetch"]
    table, weights = cases()
    results = {name: {m: [] for m in MODES} for name in table}  # type: ignore[var-annotated]
    for rep in range(args.reps):
        for name, fns in table.items():
            for mode in MODES:
                calls = 3 if name.startswith("prefill") else CALLS
                results[name][mode].append(timed(fns[mode], calls) * 1e3)
            print(f"rep {rep}: {name}: " + ", ".join(
                f"{m} {results[name][m][-1]:.2f} ms" for m in MODES), flush=True)
    lines = ["# SmolLM2-135M Q4_1 on the CPU: float32 at load against packed weights", "",
             f"`bench/micro_cpu_quantized.py --reps {args.reps}"
             f"{' --int8' if args.int8 else ''}{' --loop' if args.loop else ''}"
             f"{' --prefetch' if args.prefetch else ''}` · "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')} · load avg {load_avg()} · "
             f"mlx {mx.__version__}", "",
             f"Milliseconds, median of {CALLS} calls (prefill: 3) per repetition; the table "
             "gives the median over repetitions (modes alternated).", ""]
    if "float32" in MODES:
        lines += pair_table(results, "float32", "quantized", ("float32", "packed"))
        lines.append(f"| weights held (MiB) | {weights['float32'] / 2**20:.0f} | "
                     f"{weights['quantized'] / 2**20:.0f} | "
                     f"{weights['float32'] / weights['quantized']:.2f}x |")
    if args.int8:
        lines += ["", *pair_table(results, "quantized", "int8", ("packed", "packed, int8 x"))]
    if args.loop:
        lines += ["", *pair_table(results, "loop", "quantized",
                                  ("packed, layer loop", "packed, one C call"))]
    if args.prefetch:
        lines += ["", *pair_table(results, "no prefetch", "quantized",
                                  ("packed, no prefetch", "packed, prefetch"))]
    lines.append("")
    if "float32" in MODES:
        lines.append("float32 decode steps also hold a panel copy of the weights (not counted).")
    print("\n".join(lines))
    print(f"written to {write_report(args.out, chr(10).join(lines) + chr(10))}")


if __name__ == "__main__":
    main()
