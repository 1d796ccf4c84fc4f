"""`mlxd --tensor-parallel N`'s launcher: what each rank is started with."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.engine.tp.shard import blocks
from app.server import tp_launch


def test_ranks_get_the_server_arguments_without_the_launchers() -> None:
    argv = ["--tensor-parallel", "2", "--port", "9000", "--tp-backend=ring", "--max-batch",
            "4"]
    assert tp_launch.rank_argv(argv) == ["--port", "9000", "--max-batch", "4"]


def test_ring_ranks_share_one_hostfile_of_distinct_loopback_ports(tmp_path: Path) -> None:
    envs = tp_launch.rank_envs(3, "ring", tmp_path)
    assert [e["MLX_RANK"] for e in envs] == ["0", "1", "2"]
    assert {e["MLX_HOSTFILE"] for e in envs} == {str(tmp_path / "hosts.json")}
    hosts = json.loads((tmp_path / "hosts.json").read_text())
    assert len(hosts) == 3 and len({h[0] for h in hosts}) == 3
    assert all(h[0].startswith("127.0.0.1:") for h in hosts)
    assert all(e["MLXD_TENSOR_PARALLEL"] == "1" for e in envs)  # no rank launches again


def test_nccl_ranks_get_one_gpu_each_and_the_rendezvous(tmp_path: Path) -> None:
    envs = tp_launch.rank_envs(2, "nccl", tmp_path)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert {e["MLX_WORLD_SIZE"] for e in envs} == {"2"}
    assert len({e["NCCL_PORT"] for e in envs}) == 1
    with pytest.raises(ValueError, match="unknown"):
        tp_launch.rank_envs(2, "mpi", tmp_path)


def test_cpu_ranks_get_disjoint_cores() -> None:
    cores = tp_launch.rank_cores(len(os.sched_getaffinity(0)))
    if None in cores:
        pytest.skip("fewer cores than ranks")
    flat = [c for block in cores if block for c in block]
    assert len(flat) == len(set(flat)) == len(os.sched_getaffinity(0))
    assert tp_launch.rank_cores(len(os.sched_getaffinity(0)) + 1)[0] is None


def test_uneven_blocks_put_the_larger_ones_first() -> None:
    assert blocks(3, 2) == [2, 1]  # SmolLM2's KV heads: rank 0 holds the most
    assert blocks(8, 2) == [4, 4]
    assert blocks(1536 // 64, 2) == [12, 12]
    assert sum(blocks(7, 3)) == 7 and blocks(7, 3) == [3, 2, 2]
