"""The tensor-parallel group this process belongs to (MLX's distributed layer).

The ranks are started by `mlx.launch` or by `mlxd --tensor-parallel N`
(app/server/tp_launch.py), which set MLX_RANK and the backend's rendezvous (MLX_HOSTFILE
for the ring backend over TCP, NCCL_HOST_IP/NCCL_PORT for NCCL). Without them this
process is alone and there is no group.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from app.engine.tp.errors import GroupLost, collective_failed

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class TPGroup:
    group: Any
    """mx.distributed.Group"""
    backend: str
    stream: Any
    """Where collectives run: the ring backend's on the CPU, NCCL's on the GPU."""
    lost: str | None = None
    """Why the group is gone, once a collective failed: no collective is issued after
    that (on a broken ring a later one can wait forever)."""

    @property
    def rank(self) -> int:
        return int(self.group.rank())

    @property
    def size(self) -> int:
        return int(self.group.size())

    def all_sum(self, x: mx.array) -> mx.array:
        if self.lost is not None:
            raise GroupLost(self.lost)
        return mx.distributed.all_sum(x, group=self.group, stream=self.stream)

    def failed(self, exc: BaseException) -> GroupLost:
        self.lost = self.lost or f"tensor-parallel group lost: {exc}"
        return GroupLost(self.lost)

    def check(self, exc: Exception) -> None:
        """Raise GroupLost if `exc` is a collective's failure (or already GroupLost)."""
        if isinstance(exc, GroupLost):
            raise exc
        if collective_failed(exc):
            raise self.failed(exc) from exc


def launched() -> bool:
    """Whether a launcher started this process as one rank of a group."""
    return "MLX_RANK" in os.environ


def join_group() -> TPGroup | None:
    """Connect to the other ranks (blocks until all are there); None when alone."""
    if not launched():
        return None
    backend = "nccl" if "NCCL_HOST_IP" in os.environ else "ring"
    group = mx.distributed.init(strict=True, backend=backend)
    if group.size() < 2:
        return None
    stream = mx.cpu if backend == "ring" else mx.default_stream(mx.default_device())
    tp = TPGroup(group, backend, stream)
    logger.info("tensor-parallel rank %d of %d (%s backend)", tp.rank, tp.size, backend)
    return tp
