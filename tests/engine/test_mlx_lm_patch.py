"""The mlx-lm patch (app/accel/mlx_lm_patch.py, the CPU wing's): every layer of every patched
architecture reaches our kernels, logits stay mlx-lm's, untested releases are refused."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.models import llama
from mlx_lm.models.cache import make_prompt_cache

from app.accel import mlx_lm_patch as generic_patch
from app.accel.cpu import kernels, mlx_lm_patch
from app.models.hf import load_hf
from tests.tiny_model import build_tiny_llama, random_model

TOKENS = mx.array([[5, 9, 200, 17, 3, 88, 41, 7]])


@pytest.fixture
def restored() -> Iterator[None]:
    """Leave the patch as the process had it (installed on the CPU, as the server does)."""
    was = mlx_lm_patch.installed()
    mlx_lm_patch.uninstall()
    yield
    mlx_lm_patch.uninstall()
    if was:
        mlx_lm_patch.install()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_every_layer_calls_the_patched_kernels(kind: str, restored: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(kind)
    calls: Counter[str] = Counter()
    attention, swiglu = kernels.attention, kernels.swiglu

    def counted_attention(*args: Any, **kw: Any) -> mx.array:
        calls["attention"] += 1
        return attention(*args, **kw)

    def counted_swiglu(*args: Any, **kw: Any) -> mx.array:
        calls["swiglu"] += 1
        return swiglu(*args, **kw)

    monkeypatch.setattr(kernels, "attention", counted_attention)
    monkeypatch.setattr(kernels, "swiglu", counted_swiglu)
    assert mlx_lm_patch.install()
    mx.eval(model(TOKENS, cache=make_prompt_cache(model)))
    layers = len(model.layers)
    assert calls == {"attention": layers, "swiglu": layers}


def test_patched_logits_equal_mlx_lm(tmp_path: Path, restored: None) -> None:
    loaded = load_hf(build_tiny_llama(tmp_path / "tiny"))
    want = loaded.model(TOKENS, cache=make_prompt_cache(loaded.model))
    assert mlx_lm_patch.install()
    assert llama.scaled_dot_product_attention is kernels.attention
    assert llama.swiglu is kernels.swiglu
    got = loaded.model(TOKENS, cache=make_prompt_cache(loaded.model))
    assert mx.allclose(got, want, atol=1e-4).item()
    assert (got.argmax(-1) == want.argmax(-1)).all().item()
    mlx_lm_patch.uninstall()
    assert llama.scaled_dot_product_attention is not kernels.attention


def test_untested_mlx_lm_release_is_refused(restored: None, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    assert mlx_lm_patch.refusal(generic_patch.mlx_lm_version()) is None  # the pinned one
    assert mlx_lm_patch.refusal("0.31.9") is not None
    monkeypatch.setattr(generic_patch, "mlx_lm_version", lambda: "0.40.1")
    own = llama.scaled_dot_product_attention
    assert not mlx_lm_patch.install()
    assert llama.scaled_dot_product_attention is own
    assert "0.40.1 is not a tested release" in caplog.text
