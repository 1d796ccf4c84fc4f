"""The per-step sequence limit derived from the KV budget (app/kv/sizing.py)."""

from __future__ import annotations

from app.kv.sizing import (
    MAX_BATCH_CPU,
    MAX_BATCH_GPU,
    MIN_BATCH,
    TYPICAL_SEQUENCE_TOKENS,
    batch_from_memory,
)

# Llama-3-8B in bf16: 32 layers x 8 kv heads x 128 dims x (K + V) x 2 bytes
LLAMA_8B_PER_TOKEN = 32 * 8 * 128 * 2 * 2


def test_an_h200_budget_holds_more_than_a_constant_32() -> None:
    small = 6 * 2**30  # a GPU with little room: the budget decides
    assert batch_from_memory(small, LLAMA_8B_PER_TOKEN, 8192, on_gpu=True) == \
        small // (LLAMA_8B_PER_TOKEN * TYPICAL_SEQUENCE_TOKENS) == 24
    budget = 40 * 2**30  # a third of what a 141 GB H200 leaves beside 16 GB of weights
    assert batch_from_memory(budget, LLAMA_8B_PER_TOKEN, 8192, on_gpu=True) == \
        MAX_BATCH_GPU > 32


def test_limits_hold_at_both_ends() -> None:
    assert batch_from_memory(1 << 20, LLAMA_8B_PER_TOKEN, 8192, on_gpu=True) == MIN_BATCH
    assert batch_from_memory(1 << 50, 1000, 8192, on_gpu=True) == MAX_BATCH_GPU
    assert batch_from_memory(1 << 50, 1000, 8192, on_gpu=False) == MAX_BATCH_CPU


def test_a_short_context_counts_only_its_own_length() -> None:
    per_token = 10_000
    long = batch_from_memory(2 * 10**8, per_token, 8192, on_gpu=True)
    short = batch_from_memory(2 * 10**8, per_token, 512, on_gpu=True)
    assert long == 2 * 10**8 // (per_token * TYPICAL_SEQUENCE_TOKENS) == 9
    assert short == 2 * 10**8 // (per_token * 512) == 39
