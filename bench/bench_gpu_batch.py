"""Engine decode throughput by batch size, side by side with mlx-lm's BatchGenerator.

Both drive the very same in-memory model (random weights at a real geometry, so no
download is needed): ours through the full Engine (scheduler, sampler, streams),
the peer through `mlx_lm.generate.BatchGenerator`. Meant for the GPU machine
(`mlx[cuda13]`), runs anywhere.

    python bench/bench_gpu_batch.py --geometry 8b --batches 1,8,32,64 --tokens 128 \
        [--max-batch auto|N,...]

`--max-batch` takes a comma list: each value runs every batch size (`auto`: mlxd's own
limit from the KV budget, Settings.max_batch None), so a fixed limit and the derived
one compare in one run; the peer runs once per batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's `app`, uninstalled

from app.accel.process import prepare_process  # noqa: E402

prepare_process()  # OpenBLAS before mlx on a Linux CPU; nothing on the GPU machine

import mlx.core as mx  # noqa: E402
from mlx_lm.models import llama  # noqa: E402

GEOMETRIES: dict[str, dict[str, Any]] = {
    # Llama-3-8B shapes
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    # compute-free: what is left is per-step/per-row bookkeeping overhead
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
}


class NullTokenizer:
    """Just enough tokenizer for the engine: no eos, so every stream runs to max_tokens."""

    eos_token_ids: set[int] = set()
    bos_token_id = None

    def __init__(self, vocab: int) -> None:
        self.vocab_size = vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1]

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)

    def apply_chat_template(self, messages: Any, add_generation_prompt: bool = True) -> str:
        return ""


def build_model(geometry: str, dtype: mx.Dtype) -> llama.Model:
    args = llama.ModelArgs(model_type="llama", rms_norm_eps=1e-5, rope_theta=500000.0,
                           tie_word_embeddings=False, **GEOMETRIES[geometry])
    model = llama.Model(args)
    model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model


@dataclass
class Run:
    batch: int
    wall: float
    decode_tps: float
    total_tokens: int


def prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    mx.random.seed(seed)
    return mx.random.randint(0, vocab, (batch, length)).tolist()  # type: ignore[return-value]


async def run_ours(model: Any, vocab: int | Any, batch: int, plen: int, tokens: int,
                   max_batch: int | None = None, kv_cache: bool = False) -> Run:
    """The full Engine on `model`; `vocab` is the vocabulary size (a tokenizer that decodes
    nothing) or a real tokenizer (prompts then use its first 1,000 ids)."""
    from app.engine.engine import Engine
    from app.engine.request import Delta, Finished, GenerationRequest, SamplingParams
    from app.models.registry import ModelSource, ModelSpec, Registry
    from app.models.types import LoadedChatModel
    from app.settings import Settings

    spec = ModelSpec("bench", "chat", ModelSource(path="/nonexistent"))
    engine = Engine(Settings(eager_load=False, max_batch=max_batch, kv_cache=kv_cache),
                    Registry([spec]))
    engine.start(asyncio.get_running_loop())
    tokenizer = NullTokenizer(vocab) if isinstance(vocab, int) else vocab
    vocab = vocab if isinstance(vocab, int) else 1000
    loaded = LoadedChatModel(model, tokenizer, "bench", 1 << 20, "bench")  # type: ignore[arg-type]
    await engine.call(lambda: engine.models.add_chat_model(spec, loaded))
    first: list[float] = []

    async def one(ids: list[int]) -> int:
        n = 0
        stream = engine.submit(GenerationRequest("bench", ids, tokens,
                                                 SamplingParams(temperature=0.0)))
        async for ev in stream:
            if isinstance(ev, Delta):
                if n == 0:
                    first.append(time.perf_counter())
                n += len(ev.token_ids)
            elif isinstance(ev, Finished):
                return n
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in prompts(batch, plen, vocab, batch)))
    t1 = time.perf_counter()
    engine.stop()
    decode_tokens = sum(counts) - batch
    return Run(batch, t1 - t0, decode_tokens / max(1e-9, t1 - max(first)), sum(counts))


def run_peer(model: Any, vocab: int, batch: int, plen: int, tokens: int) -> Run:
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(model, max_tokens=tokens, completion_batch_size=max(batch, 32),
                         prefill_batch_size=min(batch, 8))
    t0 = time.perf_counter()
    uids = gen.insert(prompts(batch, plen, vocab, batch), max_tokens=[tokens] * batch)
    counts = dict.fromkeys(uids, 0)
    first_all = None
    done = 0
    while done < batch:
        responses = gen.next_generated() if hasattr(gen, "next_generated") else gen.next()
        for r in responses:
            counts[r.uid] += 1
            if r.finish_reason is not None:
                done += 1
        if first_all is None and all(c > 0 for c in counts.values()):
            first_all = time.perf_counter()
    t1 = time.perf_counter()
    gen.close()
    total = sum(counts.values())
    return Run(batch, t1 - t0, (total - batch) / max(1e-9, t1 - (first_all or t0)), total)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--geometry", default="8b", choices=sorted(GEOMETRIES))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--max-batch", default="auto", help="comma list of N or auto")
    args = ap.parse_args()
    limits = [None if x == "auto" else int(x) for x in args.max_batch.split(",")]
    model = build_model(args.geometry, getattr(mx, args.dtype))
    vocab = GEOMETRIES[args.geometry]["vocab_size"]
    print(f"device {mx.default_device()}, geometry {args.geometry}, {args.dtype}, "
          f"prompt {args.prompt}, tokens {args.tokens}")
    # warm-up both paths (kernel compilation, allocator)
    asyncio.run(run_ours(model, vocab, 2, 16, 4))
    run_peer(model, vocab, 2, 16, 4)
    print("| batch | max_batch | ours decode tok/s | peer decode tok/s | ratio | ours wall s "
          "| peer wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for b in [int(x) for x in args.batches.split(",")]:
        peer = run_peer(model, vocab, b, args.prompt, args.tokens)
        for limit in limits:
            ours = asyncio.run(run_ours(model, vocab, b, args.prompt, args.tokens, limit))
            print(f"| {b} | {limit or 'auto'} | {ours.decode_tps:.1f} | {peer.decode_tps:.1f} | "
                  f"{ours.decode_tps / peer.decode_tps:.2f} | {ours.wall:.2f} | "
                  f"{peer.wall:.2f} |", flush=True)


if __name__ == "__main__":
    main()
