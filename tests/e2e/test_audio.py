"""Transcription end to end: real server, real Whisper tiny.en, LibriVox clips."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import warnings
import wave
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.harness import Server

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
# "he was not an ill disposed young man"
CLIP = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"
SAMPLE_RATE = 16_000


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " ")).split()


def _long_wav(repeats: int = 2) -> bytes:
    """All five clips, `repeats` times: ~50 s, so the job spans two 30 s windows."""
    pcm = b""
    for _ in range(repeats):
        for clip in sorted(LIBRIVOX.glob("*.wav")):
            with wave.open(str(clip)) as w:
                pcm += w.readframes(w.getnframes())
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return buf.getvalue()


def _post(server: Server, data: bytes, name: str = "a.wav", **form: str) -> httpx.Response:
    return httpx.post(server.api + "/audio/transcriptions", files={"file": (name, data)},
                      data=form, timeout=300)


def test_openai_sdk_transcription(server: Server) -> None:
    client = openai.OpenAI(base_url=server.api, api_key="x", max_retries=0, timeout=300)
    with CLIP.open("rb") as fh:
        r = client.audio.transcriptions.create(model="whisper-1", file=fh)
    words = _words(r.text)
    assert {"he", "was", "not", "young", "man"} <= set(words), r.text


def test_every_response_format(server: Server) -> None:
    data = CLIP.read_bytes()
    duration = 95724 / 2 / SAMPLE_RATE  # 16-bit mono
    j = _post(server, data, response_format="json")
    assert j.status_code == 200 and "young man" in j.json()["text"].lower()
    t = _post(server, data, response_format="text")
    assert t.status_code == 200 and t.text.strip() == j.json()["text"].strip()
    vj = _post(server, data, response_format="verbose_json",
               **{"timestamp_granularities[]": "segment"}).json()
    assert vj["duration"] == pytest.approx(duration, abs=0.05)
    ends = [0.0]
    for seg in vj["segments"]:
        assert ends[-1] <= seg["start"] <= seg["end"] <= duration + 0.01
        ends.append(seg["end"])
    stamp = r"(\d\d):(\d\d):(\d\d){sep}(\d\d\d)"
    for fmt, sep in (("srt", ","), ("vtt", r"\.")):
        pattern = stamp.format(sep=sep) + " --> " + stamp.format(sep=sep)
        r = _post(server, data, response_format=fmt)
        assert r.status_code == 200
        if fmt == "vtt":
            assert r.text.startswith("WEBVTT")
        stamps = []
        for m in re.finditer(pattern, r.text):
            g = [int(x) for x in m.groups()]
            stamps.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000,
                           g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000))
        assert stamps
        flat = [x for pair in stamps for x in pair]
        assert flat == sorted(flat) and flat[-1] <= duration + 0.01


def test_stream_deltas_concatenate_to_final_text(server: Server) -> None:
    events = []
    with httpx.stream("POST", server.api + "/audio/transcriptions", timeout=300,
                      files={"file": ("long.wav", _long_wav())}, data={"stream": "true"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    done = [e for e in events if e["type"] == "transcript.text.done"]
    assert len(deltas) >= 2 and len(done) == 1
    assert "".join(deltas) == done[0]["text"]


def test_mp3_copy_transcribes_like_wav(server: Server) -> None:
    import av

    with wave.open(str(CLIP)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=SAMPLE_RATE)
        stream.layout = "mono"  # type: ignore[union-attr]
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):  # type: ignore[union-attr]
            out.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            out.mux(packet)
    wav_text = _post(server, CLIP.read_bytes()).json()["text"]
    mp3_text = _post(server, buf.getvalue(), name="a.mp3").json()["text"]
    assert _words(mp3_text) == _words(wav_text)


def test_bad_audio_gets_clear_errors(server: Server) -> None:
    def err(r: httpx.Response, status: int) -> dict[str, object]:
        assert r.status_code == status, r.text
        return r.json()["error"]

    assert err(_post(server, b""), 400)["param"] == "file"
    assert err(_post(server, b"this is not audio at all" * 100), 400)["code"] == "invalid_audio"
    assert err(_post(server, CLIP.read_bytes()[:60]), 400)["code"] == "invalid_audio"
    big = b"\0" * (3 * 1024 * 1024)  # the test server's limit is 2 MiB
    assert err(_post(server, big), 413)["code"] == "file_too_large"
    assert err(_post(server, CLIP.read_bytes(), model="nope"), 404)["code"] == "model_not_found"
    assert err(_post(server, CLIP.read_bytes(), model="smollm2"), 400)["param"] == "model"
    assert err(_post(server, CLIP.read_bytes(), response_format="xml"), 400)["param"] == \
        "response_format"
    r = httpx.post(server.api + "/audio/translations", files={"file": ("a.wav", CLIP.read_bytes())},
                   data={"model": "whisper-tiny.en"}, timeout=60)
    assert err(r, 400)["code"] == "model_not_supported"  # named English-only: it says so
    missing = httpx.post(server.api + "/audio/transcriptions", data={"model": "whisper-1"})
    assert err(missing, 400)["param"] == "file"
    # ...and the engine still serves.
    assert _post(server, CLIP.read_bytes()).status_code == 200


async def test_chat_stream_keeps_flowing_during_transcription(server: Server) -> None:
    client = openai.AsyncOpenAI(base_url=server.api, api_key="x", max_retries=0, timeout=300)
    stamps: list[float] = []

    async def chat() -> None:
        stream = await client.chat.completions.create(
            model="smollm2", stream=True, max_tokens=400, temperature=0.8, seed=1,
            messages=[{"role": "user", "content": "Write a long story about a lighthouse."}])
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.monotonic())

    async def transcribe() -> tuple[float, float]:
        await asyncio.sleep(1.0)  # let the chat stream start first
        t0 = time.monotonic()
        async with httpx.AsyncClient(timeout=300) as http:
            r = await http.post(server.api + "/audio/transcriptions",
                                files={"file": ("long.wav", _long_wav())})
        assert r.status_code == 200
        return t0, time.monotonic()

    chat_task = asyncio.create_task(chat())
    t0, t1 = await transcribe()
    await chat_task
    during = [s for s in stamps if t0 <= s <= t1]
    assert len(during) >= 3, f"chat produced {len(during)} tokens during {t1 - t0:.1f}s of ASR"


def test_whisper_1_translations_go_to_a_multilingual_model(server: Server) -> None:
    client = openai.OpenAI(base_url=server.api, api_key="x", max_retries=0, timeout=300)
    with CLIP.open("rb") as fh:
        translated = client.audio.translations.create(model="whisper-1", file=fh)
    assert {"he", "was", "not", "young", "man"} <= set(_words(translated.text))
    r = httpx.post(server.api + "/audio/translations", files={"file": ("a.wav", CLIP.read_bytes())},
                   data={"model": "whisper-1"}, timeout=300)
    assert r.status_code == 200 and r.headers["x-request-id"].startswith("req_")


def test_request_id_is_the_clients_own(server: Server) -> None:
    r = httpx.get(server.api + "/models", headers={"x-request-id": "my-trace-7"})
    assert r.headers["x-request-id"] == "my-trace-7"
    odd = httpx.get(server.api + "/models", headers={"x-request-id": "a b\tc"})
    assert odd.headers["x-request-id"].startswith("req_")
    line = next(x for x in server.log_text().splitlines() if "request_id=my-trace-7 " in x)
    assert "method=GET" in line and "route=/v1/models" in line and "status=200" in line


def test_multilingual_base_translates_and_detects_language(server: Server) -> None:
    """Whisper base (two offline packages joined at load) serves /v1/audio/translations;
    with no language given it detects English."""
    client = openai.OpenAI(base_url=server.api, api_key="x", max_retries=0, timeout=300)
    with CLIP.open("rb") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK marks the route so
        translated = client.audio.translations.create(model="whisper-base", file=fh)
    assert {"he", "was", "not", "young", "man"} <= set(_words(translated.text)), translated.text
    r = _post(server, CLIP.read_bytes(), model="base", response_format="verbose_json")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["language"] in ("en", "english")
    assert {"young", "man"} <= set(_words(body["text"])), body["text"]
    models = {m["id"] for m in httpx.get(server.api + "/models").json()["data"]}
    assert {"whisper-tiny.en", "whisper-base"} <= models
