"""How a tensor-parallel group fails."""

from __future__ import annotations


class GroupLost(RuntimeError):
    """A collective failed: another rank is gone. The group cannot continue (every rank
    holds only its shard), so the server ends its requests with this and exits."""


def collective_failed(exc: BaseException) -> bool:
    """Whether an MLX error is a collective's (a peer's connection lost)."""
    text = str(exc)
    return "[ring]" in text or "NCCL" in text or "nccl" in text
