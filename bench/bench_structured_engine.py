"""Constrained (json_schema) against free decode through the Engine, in process, on a
random-weight model at a real geometry: the GPU machine's version of bench_structured.py.

    python bench/bench_structured_engine.py --geometry 8b --batches 1,8 --tokens 128

The tokenizer is SmolLM2's (bench/out/smollm2-135m-hf/tokenizer.json, 49,152 tokens;
a bigger model vocabulary is masked off past it). Free rows sample any token; constrained
rows write one JSON document with a free string, closed within the same token budget.
Each rate is decode tokens/s after every row's first token, per batch size, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench_gpu_batch import GEOMETRIES, build_model, mx, prompts  # prepares the process first

WARM_UP_TOKENS = 32  # room for the schema's keys and a close
TOKENIZER = Path(__file__).resolve().parent / "out" / "smollm2-135m-hf" / "tokenizer.json"
SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": False,
                          "required": ["title", "story"],
                          "properties": {"title": {"type": "string", "maxLength": 40},
                                         "story": {"type": "string"}}}


class BenchTokenizer:
    """SmolLM2's tokenizer, without end tokens: free rows run to max_tokens."""

    eos_token_ids: set[int] = set()
    bos_token_id = None
    chat_template = None

    def __init__(self, vocab: int) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(TOKENIZER))
        self.vocab_size = vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))

    def apply_chat_template(self, messages: Any, add_generation_prompt: bool = True,
                            tools: Any = None, **variables: Any) -> str:
        return ""

    def tokenizer_json(self) -> str:
        return TOKENIZER.read_text()


async def run(model: Any, vocab: int, batch: int, plen: int, tokens: int,
              constrained: bool) -> float:
    from app.engine.engine import Engine
    from app.engine.request import Delta, GenerationRequest, SamplingParams
    from app.models.registry import ModelSource, ModelSpec, Registry
    from app.models.types import LoadedChatModel
    from app.settings import Settings
    from app.text.grammar import TokenGrammar

    spec = ModelSpec("bench", "chat", ModelSource(path="/nonexistent"))
    engine = Engine(Settings(eager_load=False, max_batch=max(64, batch), kv_cache=False),
                    Registry([spec]))
    engine.start(asyncio.get_running_loop())
    tokenizer = BenchTokenizer(vocab)
    loaded = LoadedChatModel(model, tokenizer, "bench", 1 << 20, "bench")  # type: ignore[arg-type]
    await engine.call(lambda: engine.models.add_chat_model(spec, loaded))
    grammar = TokenGrammar(tokenizer.tokenizer_json(), [2]) if constrained else None
    first: list[float] = []
    texts: list[str] = []

    async def one(ids: list[int], seed: int) -> int:
        n, text = 0, ""
        constraint = grammar.json(SCHEMA, tokens) if grammar is not None else None
        stream = engine.submit(GenerationRequest(
            "bench", ids, tokens, SamplingParams(temperature=1.0, seed=seed),
            constraint=constraint))
        async for ev in stream:
            if isinstance(ev, Delta):
                if n == 0:
                    first.append(time.perf_counter())
                n += len(ev.token_ids)
                text += ev.text
        texts.append(text)
        return n

    counts = await asyncio.gather(*(one(p, i) for i, p in
                                    enumerate(prompts(batch, plen, min(vocab, 49152), batch))))
    end = time.perf_counter()
    engine.stop()
    if constrained:
        for text in texts:
            json.loads(text)  # what the constraint promises within a budget this size
    return (sum(counts) - batch) / max(1e-9, end - max(first))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geometry", default="135m", choices=sorted(GEOMETRIES))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    dtype = mx.float32 if mx.default_device() == mx.cpu else getattr(mx, args.dtype)
    model = build_model(args.geometry, dtype)
    vocab = GEOMETRIES[args.geometry]["vocab_size"]
    print(f"device {mx.default_device()}, geometry {args.geometry}, {dtype}, "
          f"prompt {args.prompt}, tokens {args.tokens}, load {time.strftime('%H:%M:%S')}")
    for constrained in (False, True):  # warm-up: kernels, grammar
        asyncio.run(run(model, vocab, 2, 16, WARM_UP_TOKENS, constrained))
    print("| batch | free tok/s | json_schema tok/s | constrained / free | raw |")
    print("|---:|---:|---:|---:|---|")
    for b in [int(x) for x in args.batches.split(",")]:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(args.reps):
            for constrained in ((False, True) if rep % 2 == 0 else (True, False)):
                rates[constrained].append(asyncio.run(
                    run(model, vocab, b, args.prompt, args.tokens, constrained)))
        free, con = statistics.median(rates[False]), statistics.median(rates[True])
        raw = f"free {[round(x, 1) for x in rates[False]]}, " \
              f"json {[round(x, 1) for x in rates[True]]}"
        print(f"| {b} | {free:.1f} | {con:.1f} | {con / free:.3f} | {raw} |", flush=True)


if __name__ == "__main__":
    main()
