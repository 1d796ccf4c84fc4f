"""Where a decode step's time goes between the bare MLX loop and mlxd's engine, one layer
added at a time, on one HF folder (meant for the GPU machine; runs anywhere).

    python3 bench/micro_gpu_step.py --model bench/out/random-qwen3-0.6b [--batches 1,32,64]

bench_gpu.py showed mlxd over HTTP at about half the bare loop's rate at every stream count.
Each line here adds one of mlxd's parts to the bare loop, in one process, so the step where
the rate drops names the part to look at:

  bare            mlx-lm KVCache per layer, argmax, one token list read back per step
  batch-cache     the same with mlx-lm's BatchKVCache (what mlxd batches with)
  batch-nomask    BatchKVCache without its mask (right here only: no row is padded), so
                  MLX's fused attention runs: what the mask costs (on CUDA an array mask
                  takes attention off the fused kernel, to separate matmul/softmax ones)
  batch-ours      BatchKVCache with app/accel/gpu's decode attention (the mask's work
                  done by the kernel, from each row's left padding)
  engine          mlxd's Engine in-process (scheduler, runner, sampler, streams), no KV
                  store, MLX's attention
  engine-ours     the same with app/accel/gpu's decode attention
  engine+kv-ours  that with the resident KV store, as the server runs on a GPU
  engine+kv-ours+gemv  that with few-row matmuls through app/accel/gpu/gemv.py
                  (--gpu-rows-matmul; batches of up to 8 rows)

Each figure is tokens/s of decode (after the first token), best of --reps; the process's
MLX_* settings are printed with it (MLX reads them once, at its first GPU use).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.accel.process import prepare_process  # noqa: E402

prepare_process()

import mlx.core as mx  # noqa: E402
from bench_gpu_batch import run_ours  # noqa: E402
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache  # noqa: E402

from app.accel.gpu import linear as gpu_linear  # noqa: E402
from app.accel.gpu import patch as gpu_patch  # noqa: E402

PROMPT = 32


class UnmaskedKVCache(BatchKVCache):  # type: ignore[misc]
    """A BatchKVCache that gives no mask for one query a row (valid only unpadded)."""

    def make_mask(self, N: int, return_array: bool = False, **kwargs: Any) -> Any:
        return None if N == 1 else super().make_mask(N, return_array, **kwargs)


def bare(model: Any, batch: int, tokens: int, cache_kind: str,
         out: list[list[int]] | None = None) -> float:
    kinds = {"batch-cache": BatchKVCache, "batch-nomask": UnmaskedKVCache,
             "batch-ours": BatchKVCache}
    cache = [kinds[cache_kind]([0] * batch) for _ in model.layers] if cache_kind in kinds \
        else make_prompt_cache(model)
    prompt = mx.random.randint(3, 1000, (batch, PROMPT), key=mx.random.key(batch))
    y = mx.argmax(model(prompt, cache=cache)[:, -1, :], axis=-1)
    seen: list[Any] = [y.tolist()]

    def step(y: mx.array) -> mx.array:
        return mx.argmax(model(y[:, None], cache=cache)[:, -1, :], axis=-1)

    t0 = time.perf_counter()
    nxt = step(y)
    mx.async_eval(nxt)
    for i in range(tokens - 1):
        cur = nxt
        if i < tokens - 2:
            nxt = step(cur)
            mx.async_eval(nxt)
        seen.append(cur.tolist())
    rate = batch * (tokens - 1) / (time.perf_counter() - t0)
    if out is not None:
        out[:] = seen
    return rate


def with_kernel(on: bool) -> None:
    """app/accel/gpu's decode attention in mlx-lm, or mlx-lm's own (CUDA only)."""
    if on and mx.cuda.is_available():
        gpu_patch.PATCH.install()
    else:
        gpu_patch.PATCH.uninstall()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batches", default="1,32,64")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--reps", type=int, default=2)
    cfg = parser.parse_args()
    from app.models.hf import load_hf

    loaded = load_hf(cfg.model)
    model = loaded.model
    env = {k: v for k, v in os.environ.items() if k.startswith("MLX_")}
    print(f"device {mx.default_device()} · {cfg.model.name} · MLX env {env or 'defaults'}",
          flush=True)
    batches = [int(b) for b in cfg.batches.split(",")]
    rows: dict[str, dict[int, float]] = {}

    def record(name: str, b: int, rate: float) -> None:
        rows.setdefault(name, {})[b] = max(rows.get(name, {}).get(b, 0.0), rate)
        print(f"  {name:<12} batch {b:>3}: {rate:9.1f} tok/s", flush=True)

    for _ in range(cfg.reps):
        for b in batches:
            record("bare", b, bare(model, b, cfg.tokens, "bare"))
            ref: list[list[int]] = []
            record("batch-cache", b, bare(model, b, cfg.tokens, "batch-cache", ref))
            for name in ("batch-nomask", "batch-ours"):
                seen: list[list[int]] = []
                with_kernel(name.endswith("ours"))
                record(name, b, bare(model, b, cfg.tokens, name, seen))
                if seen != ref:
                    print(f"  {name} tokens differ from batch-cache's at batch {b}")
            for name, kv in (("engine", False), ("engine-ours", False),
                             ("engine+kv-ours", True), ("engine+kv-ours+gemv", True)):
                with_kernel("ours" in name)
                if name.endswith("gemv") and mx.cuda.is_available():
                    gpu_linear.install(model)
                run = asyncio.run(run_ours(model, loaded.tokenizer, b, PROMPT, cfg.tokens,
                                           kv_cache=kv))
                gpu_linear.uninstall(model)
                record(name, b, run.decode_tps)
            with_kernel(False)
    print("\n| step | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---:|" * len(batches))
    for name, by in rows.items():
        base = rows["bare"]
        print(f"| {name} | " + " | ".join(
            f"{by[b]:.0f} ({by[b] / base[b]:.2f}×)" for b in batches) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
