"""SIGTERM with live streams: every client gets a final event and [DONE], the process
exits 0 within the drain timeout, and the streams' named sessions survive the restart."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.harness import run_server

DRAIN = 3.0
GRACE = 5.0  # app/server/run.py's FINAL_EVENT_GRACE_SECONDS
STREAMS = 4
# SmolLM2's end-of-turn and end-of-text tokens, banned so the streams outlast the drain.
NO_EOS = {"2": -100, "0": -100}


def _stream(url: str, session: str, lines: list[str], started: threading.Event) -> None:
    body = {"model": "smollm2", "stream": True, "max_tokens": 4000, "temperature": 0,
            "logit_bias": NO_EOS,
            "messages": [{"role": "user", "content": "Tell a very long story about a ship."}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"X-Session-ID": session}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
                if len(lines) >= 3:
                    started.set()


def test_sigterm_drains_streams_and_exits_zero(tmp_path: Path) -> None:
    env = {"MLXD_KV_DIR": str(tmp_path / "kv"), "MLXD_DRAIN_SECONDS": str(DRAIN)}
    outputs: list[list[str]] = [[] for _ in range(STREAMS)]
    with run_server(tmp_path, env=env) as srv:
        events = [threading.Event() for _ in range(STREAMS)]
        threads = [threading.Thread(target=_stream, args=(srv.url, f"live-{i}", outputs[i],
                                                          events[i]))
                   for i in range(STREAMS)]
        for t in threads:
            t.start()
        for e in events:
            assert e.wait(90), "a stream never started"
        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(DRAIN + GRACE + 10) == 0, srv.log_text()[-3000:]
        took = time.monotonic() - sent
        for t in threads:
            t.join(10)
        assert took < DRAIN + GRACE + 5, took
    for lines in outputs:
        assert lines[-1] == "[DONE]", lines[-3:]
        final = json.loads(lines[-2])
        assert final["error"]["code"] == "shutdown", final
        assert all(json.loads(x)["choices"] for x in lines[1:-2])  # well-formed chunks
    with run_server(tmp_path, env=env) as srv:
        sessions = {s["session"]: s for s in
                    httpx.get(srv.api + "/cache/sessions").json()["data"]}
        for i in range(STREAMS):
            assert sessions[f"live-{i}"]["on_disk"] and sessions[f"live-{i}"]["tokens"] > 20
