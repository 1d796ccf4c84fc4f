"""CLI: `mlxd [--host H] [--port P] [--models FILE] ...` (also `python -m app`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from app.settings import Settings


def parse_args(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(prog="mlxd", description="Local OpenAI-compatible MLX server")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--models", type=Path, help="path of models.yaml")
    p.add_argument("--model", action="append", metavar="PATH_OR_REPO",
                   help="serve this chat model too (GGUF file, HF folder or Hub repo id; "
                        "repeatable; the first chat one is the default; a BERT-family "
                        "folder serves embeddings)")
    p.add_argument("--list-models", action="store_true",
                   help="print the configured models and whether each is available, then exit")
    p.add_argument("--default-model", help="chat model loaded at start-up")
    p.add_argument("--max-batch", type=int,
                   help="most sequences decoding together (default: from the KV budget)")
    p.add_argument("--prefill-chunk", type=int,
                   help="most prompt tokens per prefill step (default 512 CPU, 4096 GPU)")
    p.add_argument("--kv-budget-bytes", type=int, help="byte budget of resident KV caches")
    p.add_argument("--no-kv-cache", dest="kv_cache", action="store_const", const=False,
                   help="do not keep KV caches between requests (every prompt cold)")
    p.add_argument("--kv-dir", type=Path, help="directory for persisted session caches")
    p.add_argument("--no-eager-load", dest="eager_load", action="store_const", const=False,
                   help="do not load the default model at start-up")
    p.add_argument("--no-cpu-fast-kernels", dest="cpu_fast_kernels", action="store_const",
                   const=False, help="use mlx-lm's own attention/SwiGLU on the CPU")
    p.add_argument("--no-gpu-fast-kernels", dest="gpu_fast_kernels", action="store_const",
                   const=False, help="use MLX's own attention for batched decode on a GPU")
    p.add_argument("--gpu-rows-matmul", dest="gpu_rows_matmul", action="store_const",
                   const=True, help="few-row matmuls through mlxd's GPU kernel (experimental)")
    p.add_argument("--hf-offline", action="store_const", const=True,
                   help="never contact the Hugging Face Hub")
    p.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                   help="require `Authorization: Bearer KEY` on /v1 and /metrics "
                        "(repeatable; each key's caches are its own)")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="ORIGIN",
                   help="let browser pages of this origin call the API (repeatable; * = any)")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", metavar="HOST",
                   help="accept this Host header too (repeatable; * = any)")
    p.add_argument("--drain-seconds", type=float,
                   help="on SIGTERM, how long in-flight requests may finish (default 15)")
    p.add_argument("--tensor-parallel", type=int, metavar="N",
                   help="shard the default chat model over N ranks on this host "
                        "(MLX's ring backend over loopback on CPUs, NCCL on NVIDIA GPUs)")
    p.add_argument("--tp-backend", choices=["auto", "ring", "nccl"],
                   help="collectives of --tensor-parallel (default auto: nccl with NVIDIA "
                        "GPUs, else ring)")
    p.add_argument("--log-level", help="debug, info, warning, ...")
    args = vars(p.parse_args(argv))
    return {k: v for k, v in args.items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    list_models = bool(args.pop("list_models", False))
    settings = Settings(**args)  # type: ignore[arg-type]
    if list_models:
        print_models(settings)
        return
    rank = int(os.environ.get("MLX_RANK", "0"))
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s {f'rank{rank} ' if rank else ''}"
                               "%(name)s: %(message)s")
    if settings.tensor_parallel > 1:
        from app.server.tp_launch import launch

        sys.exit(launch(settings.tensor_parallel, settings.tp_backend, sys.argv[1:]))
    from app.accel.process import prepare_process

    prepare_process()  # OpenBLAS and process tuning must precede the first mlx import
    if rank > 0:  # a tensor-parallel rank other than 0: no HTTP, it replays rank 0's steps
        from app.engine.tp.follower import follow

        sys.exit(follow(settings))
    from app.server.run import serve

    try:
        serve(settings)
    except SystemExit as exc:
        _exit_now(exc.code if isinstance(exc.code, int) else 1)
    _exit_now(0)


def _exit_now(code: int) -> NoReturn:
    """End the server process once serve() is done (in-flight requests ended, KV sessions
    written, engine thread stopped), without the interpreter's teardown: destroying MLX's
    C++ statics at exit once aborted a cleanly drained server ("terminate called without an
    active exception", exit -6 instead of 0)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def print_models(settings: Settings) -> None:
    from app.models.registry import Registry, source_available

    registry = Registry.from_yaml(settings.models, settings.default_model,
                                  settings.default_transcription_model, settings.model)
    defaults = {registry.default_chat, registry.default_transcription,
                registry.default_embedding}
    for spec in registry.specs:
        state = "available" if source_available(spec) else "not available here"
        mark = " (default)" if spec.id in defaults else ""
        aliases = f"  aliases: {', '.join(spec.aliases)}" if spec.aliases else ""
        print(f"{spec.id}{mark}  {spec.kind}  {spec.source.describe()}  {state}{aliases}")


if __name__ == "__main__":
    main()
