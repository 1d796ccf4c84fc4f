"""Where one numpy decode step of the default GGUF (SmolLM2-135M Q4_1, packed weights) goes:
each projection's kernel call, the LM head, attention, the numpy elementwise work, and the
rest (Python, residual adds, cache writes).

    .venv/bin/python bench/profile_cpu_decode.py [--steps 40] [--out profile-cpu-decode.md]

The decoder's parts are wrapped in timers (perf_counter around each call); the wrapped step
is timed against the bare one, so the timers' own cost shows as the difference. Each
matmul is also timed alone, on one thread and on all, to give its read rate and what the
hand-off to the kernel's worker threads costs or saves.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.accel.process import prepare_process  # noqa: E402

prepare_process()

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from common import gguf_path, load_avg, write_report  # noqa: E402
from micro_timing import timed  # noqa: E402
from mlx_lm.models.cache import BatchKVCache  # noqa: E402

from app.accel.choose import accelerate_chat  # noqa: E402
from app.accel.cpu import llama_decoder, quantized  # noqa: E402
from app.models.gguf import load_gguf  # noqa: E402
from app.settings import Settings  # noqa: E402

BATCHES = (1, 8)
CONTEXT = 200  # cached tokens per row, as micro_cpu_quantized.py
# numpy's elementwise steps (the path without the C kernels) and the decoder's C ones
ELEMENTWISE = ("_rms_norm", "_rope", "_silu", "softmax_np_")
METHODS = {"_norm": "RMSNorm", "_swiglu": "SwiGLU", "_attend": "attention kernel"}


class Timers:
    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] += time.perf_counter() - t0
        return timed


def _caches(model: Any, b: int) -> tuple[list[BatchKVCache], np.ndarray]:
    lens = [CONTEXT + 7 * i for i in range(b)]
    caches = [BatchKVCache([max(lens) - n for n in lens]) for _ in model.layers]
    tokens = mx.array([[0] * (max(lens) - n) + [7 + (i * 13 + j) % 900 for j in range(n)]
                       for i, n in enumerate(lens)])
    mx.eval(model(tokens, cache=caches)[:, -1])
    return caches, np.arange(5, 5 + b)


def _instrument(dec: Any, timers: Timers) -> Callable[[], None]:
    """Wrap the decoder's parts; returns the undo."""
    undo: list[Callable[[], None]] = []
    for name in ELEMENTWISE:
        orig = getattr(llama_decoder, name)
        setattr(llama_decoder, name, timers.wrap(name.strip("_"), orig))
        undo.append(lambda n=name, o=orig: setattr(llama_decoder, n, o))
    for name, label in METHODS.items():
        setattr(dec, name, timers.wrap(label, getattr(dec, name)))
        undo.append(lambda n=name: delattr(dec, n))
    roles = ("qkv", "out", "gate_up", "down")
    for layer in dec.layers:
        for role in roles:
            orig = getattr(layer, role)
            setattr(layer, role, timers.wrap(f"matmul {role}", orig))
            undo.append(lambda la=layer, r=role, o=orig: setattr(la, r, o))
    head = dec.head
    dec.head = timers.wrap("LM head", head)
    undo.append(lambda: setattr(dec, "head", head))
    attn = dec._attention
    dec._attention = timers.wrap("attention (all)", attn)
    undo.append(lambda: delattr(dec, "_attention"))
    return lambda: [u() for u in reversed(undo)]  # type: ignore[func-returns-value]


def _matmul_rows(dec: Any, b: int, n: int) -> list[str]:
    """Each distinct matmul alone: ms on all threads, on one, and the weight bytes read."""
    layer = dec.layers[0]
    rows = []
    for role, m in (("qkv", layer.qkv), ("out", layer.out), ("gate_up", layer.gate_up),
                    ("down", layer.down), ("LM head", dec.head)):
        x = np.random.default_rng(0).standard_normal((b, m.n_in)).astype(np.float32)
        nbytes = sum(w.packed.nbytes + w.scales.nbytes + w.biases.nbytes for w in m.weights)
        t_mt = timed(lambda m=m, x=x: m(x), n) * 1e3
        parts, split = m.parts, m._split
        m.parts, m._split = [(w, c, 1, p) for w, c, _, p in parts], 1
        t_1 = timed(lambda m=m, x=x: m(x), n) * 1e3
        m.parts, m._split = parts, split
        rows.append(f"| {role} | {m.n_out}x{m.n_in} {m.bits}-bit | {nbytes / 2**20:.2f} | "
                    f"{t_mt * 1e3:.0f} | {t_1 * 1e3:.0f} | "
                    f"{nbytes / (t_mt * 1e-3) / 1e9:.1f} |")
    return rows


def profile(model: Any, dec: Any, b: int, steps: int) -> list[str]:
    caches, tokens = _caches(model, b)
    bare = timed(lambda: dec.step(tokens, caches), steps) * 1e3
    timers = Timers()
    undo = _instrument(dec, timers)
    t0 = time.perf_counter()
    for _ in range(steps):
        dec.step(tokens, caches)
    wrapped = (time.perf_counter() - t0) / steps * 1e3
    undo()
    per = {k: v / steps * 1e3 for k, v in timers.total.items()}
    inner = sum(per.get(k, 0) for k in ("matmul qkv", "matmul out", "rope", "softmax_np",
                                         "attention kernel"))
    # _rms_norm of qwen3's heads would sit inside attention too; llama has none
    per["attention, the rest (numpy: scores, values, mask; C: RoPE + K/V store, Python)"] = \
        per.pop("attention (all)") - inner
    listed = sum(per.values())
    lines = [f"### batch {b}", "",
             f"bare step {bare:.2f} ms; wrapped {wrapped:.2f} ms (timers cost "
             f"{wrapped - bare:.2f})", "",
             "| part | ms / step | share of wrapped |", "|---|---|---|"]
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.2f} | {v / wrapped:.0%} |")
    lines.append(f"| rest (Python, embedding, adds, offsets) | {wrapped - listed:.2f} | "
                 f"{(wrapped - listed) / wrapped:.0%} |")
    lines += ["", "Each matmul alone (one layer's, and the head):", "",
              "| matmul | shape | MiB read | µs, all threads | µs, one thread | GB/s |",
              "|---|---|---|---|---|---|", *_matmul_rows(dec, b, 50), ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default="profile-cpu-decode.md")
    args = p.parse_args()
    loaded = load_gguf(gguf_path(), cpu_quantized=True)
    print(accelerate_chat(loaded, Settings()), flush=True)
    dec = loaded.decode_step
    assert dec is not None
    # the parts are timed in the per-layer loop; native/step.c runs the same kernels in one
    # call (bench/micro_cpu_quantized.py --loop compares the two)
    dec._fused = None  # type: ignore[attr-defined]
    lines = ["# One numpy decode step of SmolLM2-135M Q4_1 (packed weights), by part", "",
             f"`bench/profile_cpu_decode.py --steps {args.steps}` · "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')} · load avg {load_avg()} · "
             f"kernel threads {quantized.workers()} · {CONTEXT}+ cached tokens a row", ""]
    for b in BATCHES:
        lines += profile(loaded.model, dec, b, args.steps)
        print("\n".join(lines), flush=True)
    print(f"written to {write_report(args.out, chr(10).join(lines) + chr(10))}")


if __name__ == "__main__":
    main()
