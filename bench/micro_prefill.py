"""In-process measurements behind the prefill findings in bench/results/ (no server).

    .venv/bin/python bench/micro_prefill.py [--split-attention]

1. Logits of every position vs of the last one: the final prefill chunk and a batched
   group of short prompts only need one row per sequence, but `model(x)[:, -1]` runs the
   49152-wide lm_head over all of them first.
2. Where a long-context prefill chunk goes: SDPA at 4096 keys, 512 queries, vs its GEMMs.
3. (--split-attention, a few minutes) prefill with each chunk's attention split in two
   halves of query rows on two CPU streams, which MLX runs in parallel.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import app.accel.cpu.blas  # noqa: E402

app.accel.cpu.blas.load_openblas()

import mlx.core as mx  # noqa: E402
import mlx_lm.models.llama as llama  # noqa: E402
from common import ensure_hf_folder, load_avg  # noqa: E402
from micro_timing import timed  # noqa: E402
from mlx_lm import load  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

CHUNK = 512


def last_logits(model: Any, x: mx.array, cache: list[Any]) -> mx.array:
    h = model.model(x, cache=cache)[:, -1, :]
    return model.model.embed_tokens.as_linear(h)  # SmolLM2 ties its embeddings


def logits_rows(model: Any) -> None:
    for batch, length in ((1, CHUNK), (8, 50), (1, 23)):
        x = mx.array([[5 + (i + j) % 1000 for j in range(length)] for i in range(batch)])

        def all_rows(x: mx.array = x) -> mx.array:
            return model(x, cache=make_prompt_cache(model))[:, -1, :]

        def one_row(x: mx.array = x) -> mx.array:
            return last_logits(model, x, make_prompt_cache(model))

        full, last = timed(all_rows), timed(one_row)
        print(f"{batch}x{length} tokens: all-position logits {full:.3f}s, last-row logits "
              f"{last:.3f}s ({(1 - last / full) * 100:.0f}% less; load {load_avg()})", flush=True)


def attention_share() -> None:
    ctx, n = 4096, CHUNK
    q = mx.random.normal((1, 9, n, 64))
    k, v = mx.random.normal((1, 3, ctx, 64)), mx.random.normal((1, 3, ctx, 64))
    s = q.reshape(1, 3, 3 * n, 64) @ k.swapaxes(-1, -2)
    mx.eval(q, k, v, s)
    sdpa = timed(lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125,
                                                              mask="causal"))
    qk = timed(lambda: q.reshape(1, 3, 3 * n, 64) @ k.swapaxes(-1, -2))
    soft = timed(lambda: mx.softmax(s, axis=-1))
    print(f"one layer, {n} queries x {ctx} keys: SDPA {sdpa * 1e3:.0f} ms (x30 layers = "
          f"{sdpa * 30:.1f}s per chunk); QK^T GEMM {qk * 1e3:.0f} ms, softmax "
          f"{soft * 1e3:.0f} ms ({s.size / soft / 1e6:.0f} M elements/s)", flush=True)


def split_attention(model: Any) -> None:
    orig = llama.scaled_dot_product_attention
    streams = (mx.new_stream(mx.cpu), mx.new_stream(mx.cpu))

    def split_sdpa(queries: mx.array, keys: mx.array, values: mx.array, cache: Any,
                   scale: float, mask: Any, sinks: Any = None) -> mx.array:
        n, ctx = queries.shape[2], keys.shape[2]
        if n < 64 or not (mask is None or isinstance(mask, str)):
            return orig(queries, keys, values, cache=cache, scale=scale, mask=mask)
        h = n // 2  # rows [0, h) see keys [0, ctx - n + h): "causal" stays bottom-right
        a = mx.fast.scaled_dot_product_attention(
            queries[:, :, :h], keys[:, :, : ctx - n + h], values[:, :, : ctx - n + h],
            scale=scale, mask=mask, stream=streams[0])
        b = mx.fast.scaled_dot_product_attention(queries[:, :, h:], keys, values, scale=scale,
                                                 mask=mask, stream=streams[1])
        return mx.concatenate([a, b], axis=2)

    def prefill(total: int) -> tuple[float, mx.array]:
        cache = make_prompt_cache(model)
        t0 = time.perf_counter()
        for start in range(0, total, CHUNK):
            ids = list(range(1 + start, 1 + min(total, start + CHUNK)))
            out = model(mx.array([ids]), cache=cache)
            mx.eval([c.state for c in cache])
        last = out[:, -1, :]
        mx.eval(last)
        return time.perf_counter() - t0, last

    for total in (1024, 4096):
        llama.scaled_dot_product_attention = orig
        t_one, ref = prefill(total)
        llama.scaled_dot_product_attention = split_sdpa
        t_two, new = prefill(total)
        llama.scaled_dot_product_attention = orig
        print(f"prefill {total} tokens: one stream {t_one:.1f}s, attention split over two "
              f"streams {t_two:.1f}s; max logit difference "
              f"{mx.abs(ref - new).max().item():.1e} (load {load_avg()})", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split-attention", action="store_true", help="also run part 3")
    args = p.parse_args()
    model = load(str(ensure_hf_folder()))[0]
    logits_rows(model)
    attention_share()
    if args.split_attention:
        split_attention(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
