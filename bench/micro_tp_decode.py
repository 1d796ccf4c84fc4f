"""Where a tensor-parallel decode step goes: the bare loop under MLX's ring backend.

    .venv/bin/mlxd --help >/dev/null  # (the venv)
    .venv/bin/python bench/micro_tp_decode.py --ranks 2 [--reps 20]

Starts the ranks itself (the same environment `mlxd --tensor-parallel` gives them, each
pinned to its own cores), loads SmolLM2 from the default GGUF as a shard exactly as the
server does (app/engine/models.py's load_chat_model), and on every rank times: a decode
step of the sharded model at batch 1 and 8 (~200 cached tokens), the same step's layers
alone, and the step's all-reduces alone (two per layer, [B, hidden] float32). Rank 0
prints the table; `--ranks 1` gives the unsharded figures (same MLX ops, no collectives).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BATCHES = (1, 8)
CACHED = 200


def _rank_main(reps: int) -> None:
    from app.accel.process import prepare_process

    prepare_process()
    import mlx.core as mx
    from common import gguf_path
    from mlx_lm.models.cache import make_prompt_cache

    from app.engine import forward
    from app.engine.models import load_chat_model
    from app.engine.tp.group import join_group
    from app.models.registry import ModelSource, ModelSpec
    from app.settings import Settings

    tp = join_group()
    spec = ModelSpec("bench", "chat", ModelSource(path=str(gguf_path())))
    # float32 MLX ops with and without sharding: the same compute, only the split differs
    loaded = load_chat_model(spec, Settings(cpu_quantized_weights=False), tp)
    model = loaded.model
    hidden = int(model.args.hidden_size)
    layers = len(model.layers)
    rows = []
    for b in BATCHES:
        cache = make_prompt_cache(model)
        mx.eval(forward.prefill(model, mx.zeros((b, CACHED), dtype=mx.int32), cache,
                                mx.zeros((b,), dtype=mx.int32)))
        tokens = mx.ones((b, 1), dtype=mx.int32)

        def step(project: bool, tokens: mx.array = tokens, cache: list = cache) -> None:
            out = forward.decode(model, tokens, cache, project)
            mx.eval(out)
            for c in cache:  # stay at CACHED positions
                c.offset -= 1

        def reduces(b: int = b) -> None:
            x = mx.ones((b, 1, hidden))
            for _ in range(2 * layers):
                x = tp.all_sum(x) * 0.5 if tp is not None else x * 0.5
            mx.eval(x)

        figures = {}
        for name, fn in (("step", lambda: step(True)), ("layers", lambda: step(False)),
                         ("all-reduces", reduces)):
            fn()
            t = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
            figures[name] = sorted(t)[len(t) // 2] * 1000
        rows.append((b, figures))
    if tp is None or tp.rank == 0:
        n = tp.size if tp is not None else 1
        print(f"ranks={n}  " + "  ".join(
            f"b{b}: step {f['step']:.1f} ms, layers {f['layers']:.1f} ms, "
            f"{2 * layers} all-reduces {f['all-reduces']:.1f} ms" for b, f in rows), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--no-pin", action="store_true", help="let the ranks share every core")
    p.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_main:
        _rank_main(args.reps)
        return
    from app.server.tp_launch import rank_cores, rank_envs

    cmd = [sys.executable, __file__, "--rank-main", "--reps", str(args.reps)]
    if args.ranks == 1:
        subprocess.run(cmd, check=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        envs = rank_envs(args.ranks, "ring", Path(tmp))
        procs = []
        pins = [None] * args.ranks if args.no_pin else rank_cores(args.ranks)
        for env, cores in zip(envs, pins):
            procs.append(subprocess.Popen(
                cmd, env=env, preexec_fn=(lambda c=cores: os.sched_setaffinity(0, c))
                if cores else None))
        codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"ranks exited with {json.dumps(codes)}")


if __name__ == "__main__":
    main()
