"""How a tensor-parallel group fails."""

from __future__ import annotations


class GroupLost(RuntimeError):
    """A collective failed: another rank is gone. The group cannot continue (every rank
    holds only its shard), so the server ends its requests with this and exits."""
