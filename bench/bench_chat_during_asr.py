"""Chat decode rate while a transcription runs, on one mlxd server (the default models).

    .venv/bin/python bench/bench_chat_during_asr.py [--reps 3] [--tokens 160]

The engine runs chat and Whisper on one thread: a transcription window's encoder pass
and its decode steps take turns with the chat batch's decode steps. Per repetition, in
turns: a greedy chat stream alone; a transcription of ~60 s of LibriVox speech alone;
then both at once (the transcription starts once the stream is flowing). Reported: the
chat stream's tokens/s alone and while the transcription runs, the longest gap between
two chat tokens during it (the issue's bound: one window's compute), and the
transcription's real-time factor alone and beside the chat stream.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import io
import statistics
import sys
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    PYTHON,
    ServerSpec,
    StreamResult,
    chat_body,
    client,
    environment_note,
    load_avg,
    running,
    stream_chat,
    write_report,
)

CLIPS = "/usr/share/pocketsphinx/test/data/librivox/*.wav"
SAMPLE_RATE = 16_000
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def long_wav() -> tuple[bytes, float]:
    """The LibriVox clips twice over with short gaps, as 16 kHz mono PCM WAV."""
    parts = []
    for path in sorted(glob.glob(CLIPS)) * 2:
        with wave.open(path) as w:
            parts.append(np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16))
        parts.append(np.zeros(SAMPLE_RATE // 2, np.int16))
    if not parts:
        raise SystemExit(f"no clips at {CLIPS} (apt-get install pocketsphinx-testdata)")
    audio = np.concatenate(parts)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(audio.tobytes())
    return buf.getvalue(), len(audio) / SAMPLE_RATE


async def transcribe(base_url: str, wav: bytes) -> tuple[float, float]:
    async with client(600) as c:
        t0 = time.perf_counter()
        r = await c.post(base_url + "/v1/audio/transcriptions",
                         files={"file": ("long.wav", wav)}, data={"model": "whisper-1"})
        r.raise_for_status()
        return t0, time.perf_counter()


def rate_within(res: StreamResult, t0: float, t1: float) -> tuple[float, float]:
    """Chat tokens/s and the longest gap (s) between tokens inside [t0, t1]."""
    inside = [t for t in res.stamps if t0 <= t <= t1]
    if len(inside) < 2:
        return 0.0, t1 - t0
    edges = [t0, *inside, t1]
    return (len(inside) - 1) / (inside[-1] - inside[0]), max(np.diff(edges))


async def one_rep(base_url: str, wav: bytes, tokens: int) -> dict[str, float]:
    async with client(600) as c:
        alone = await stream_chat(c, base_url, chat_body(PROMPT, tokens))
    t0, t1 = await transcribe(base_url, wav)
    asr_alone = t1 - t0

    async def chat() -> StreamResult:
        async with client(600) as c:
            return await stream_chat(c, base_url, chat_body(PROMPT, tokens))

    task = asyncio.create_task(chat())
    await asyncio.sleep(1.0)  # the stream is decoding before the audio arrives
    t0, t1 = await transcribe(base_url, wav)
    during = await task
    rate, gap = rate_within(during, t0, t1)
    return {"chat_alone": alone.decode_rate or 0.0, "chat_during": rate, "max_gap": gap,
            "asr_alone": asr_alone, "asr_with_chat": t1 - t0,
            "overlap_tokens": float(sum(t0 <= t <= t1 for t in during.stamps))}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tokens", type=int, default=400, help="chat tokens per stream")
    p.add_argument("--out", default="chat-during-asr.md")
    args = p.parse_args()
    wav, seconds = long_wav()
    spec = ServerSpec("ours-default", [PYTHON, "-m", "app", "--log-level", "warning"],
                      "mlxd on models.yaml (SmolLM2 GGUF + whisper tiny.en)", ours=True)
    rows = []
    with running(spec) as srv:
        async with httpx.AsyncClient() as c:  # warm both models
            await c.post(srv.base_url + "/v1/audio/transcriptions", timeout=600,
                         files={"file": ("w.wav", wav)}, data={"model": "whisper-1"})
        for rep in range(args.reps):
            row = await one_rep(srv.base_url, wav, args.tokens)
            rows.append(row)
            print(f"rep {rep}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items())
                  + f" (load {load_avg()})", flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    lines = [
        "# Chat decode rate while a transcription runs (one mlxd server)", "",
        f"`bench/bench_chat_during_asr.py --reps {args.reps} --tokens {args.tokens}` · "
        f"{environment_note()}", "",
        f"Audio: {seconds:.1f} s of LibriVox speech (tiny.en, default options); chat: "
        "SmolLM2-135M GGUF, greedy. Medians over repetitions.", "",
        "| figure | value |", "|---|---|",
        f"| chat decode alone (tok/s) | {med['chat_alone']:.2f} |",
        f"| chat decode during the transcription (tok/s) | {med['chat_during']:.2f} |",
        f"| during / alone | {med['chat_during'] / med['chat_alone']:.2f}x |",
        f"| longest gap between chat tokens during it (s) | {med['max_gap']:.2f} |",
        f"| chat tokens streamed during it | {med['overlap_tokens']:.0f} |",
        f"| transcription RTF alone | {med['asr_alone'] / seconds:.3f} |",
        f"| transcription RTF beside the chat stream | {med['asr_with_chat'] / seconds:.3f} |",
        "", "Raw: " + "; ".join(", ".join(f"{k} {v:.2f}" for k, v in r.items()) for r in rows),
    ]
    print("\n".join(lines))
    print(f"written to {write_report(args.out, chr(10).join(lines) + chr(10))}")


if __name__ == "__main__":
    asyncio.run(main())
