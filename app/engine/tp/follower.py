"""A rank other than 0: load the same shard-able model, then replay rank 0's cache
operations until told to stop (or until rank 0 is gone).

No HTTP, no scheduling, no sampling here: this rank only computes its shard of every
forward that rank 0 runs, in the same order, so every collective meets its partner.
"""

from __future__ import annotations

import logging

import mlx.core as mx

from app.engine.models import ModelManager
from app.engine.tp.errors import GroupLost
from app.engine.tp.group import join_group
from app.engine.tp.journal import STOP, Replica, own_figures
from app.models.registry import Registry
from app.settings import Settings

logger = logging.getLogger(__name__)


def follow(settings: Settings) -> int:
    """Run this rank until rank 0 stops the group; the process's exit status."""
    tp = join_group()
    if tp is None or tp.rank == 0:
        raise RuntimeError("follow() runs on a tensor-parallel rank other than 0")
    registry = Registry.from_yaml(settings.models, settings.default_model,
                                  settings.default_transcription_model, settings.model)
    spec = registry.get(registry.default_chat) if registry.default_chat else None
    if spec is None:
        raise RuntimeError("tensor parallelism needs a default chat model")
    manager = ModelManager(settings, registry, tp=tp)
    manager.ensure_chat(spec)  # the same loads and warm-up forwards as rank 0
    ops = manager.runners[spec.id].ops
    assert isinstance(ops, Replica)
    logger.info("rank %d serving its shard of %s", tp.rank, spec.id)
    try:
        while True:
            batch = ops.channel.receive(own_figures(ops, ops.kv_bytes()))
            for op in batch:
                if op[0] == STOP:
                    logger.info("rank %d: stopped by rank 0", tp.rank)
                    return 0
                _replay(ops, op)
    except GroupLost as exc:
        logger.critical("rank %d: %s; exiting", tp.rank, exc)
        return 1


def _replay(ops: Replica, op: list[object]) -> None:
    name, args = str(op[0]), op[1:]
    try:
        result = ops.run(name, *args)
        if isinstance(result, mx.array):
            mx.eval(result)  # the forward rank 0 samples from: the same collectives
    except Exception as exc:  # rank 0 ran the same operation on the same shapes: it failed too
        ops.channel.tp.check(exc)  # unless a rank is gone
        logger.exception("replaying %s failed (rank 0 fails the same request)", name)
