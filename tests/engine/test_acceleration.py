"""What app.accel.choose decides per loaded model, and that the off switch turns all of it
off (chat and Whisper alike)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from app.accel.choose import accelerate_chat, accelerate_whisper
from app.accel.cpu import mlx_lm_patch
from app.accel.cpu.whisper_decoder import NumpyWindowSteps
from app.models.hf import load_hf
from app.models.whisper.mlx_steps import MlxWindowSteps
from app.models.whisper.model import Whisper, WhisperDims
from app.models.whisper.ops import MLX_OPS
from app.settings import Settings
from tests.tiny_model import build_tiny_llama

ON_CPU = mx.default_device() == mx.cpu
TINY_WHISPER = WhisperDims(n_mels=80, n_audio_ctx=16, n_audio_state=32, n_audio_head=2,
                           n_audio_layer=1, n_vocab=64, n_text_ctx=16, n_text_state=32,
                           n_text_head=2, n_text_layer=1)


@pytest.fixture
def restored() -> Iterator[None]:
    was = mlx_lm_patch.installed()
    yield
    mlx_lm_patch.uninstall()
    if was:
        mlx_lm_patch.install()


def test_chat_off_switch_leaves_mlx_alone(tmp_path: Path, restored: None) -> None:
    loaded = load_hf(build_tiny_llama(tmp_path / "tiny"))
    mlx_lm_patch.install()  # an earlier model's choice
    assert accelerate_chat(loaded, Settings(cpu_fast_kernels=False)) == "mlx"
    assert loaded.decode_step is None
    assert not mlx_lm_patch.installed()


@pytest.mark.skipif(not ON_CPU, reason="CPU acceleration")
def test_chat_on_the_cpu_gets_kernels_and_numpy_steps(tmp_path: Path, restored: None) -> None:
    loaded = load_hf(build_tiny_llama(tmp_path / "tiny"))
    accelerate_chat(loaded, Settings())
    assert loaded.acceleration == "cpu kernels, numpy decode steps"
    assert loaded.decode_step is not None and mlx_lm_patch.installed()


def _whisper() -> Whisper:
    model = Whisper(TINY_WHISPER)
    mx.eval(model.parameters())
    return model


def _steps(model: Whisper) -> object:
    from app.models.whisper.decoding import WindowDecoder

    cross = model.encode(mx.zeros((1, TINY_WHISPER.n_mels, 2 * TINY_WHISPER.n_audio_ctx)))
    return WindowDecoder(model, None, cross, [1], [], []).steps  # type: ignore[arg-type]


def test_whisper_off_switch_keeps_mlx_ops() -> None:
    model = _whisper()
    assert accelerate_whisper(model, Settings(cpu_fast_kernels=False)) == "mlx"
    assert model.ops is MLX_OPS
    assert all(m.ops is MLX_OPS for _, m in model.named_modules() if hasattr(m, "ops"))
    assert isinstance(_steps(model), MlxWindowSteps)


@pytest.mark.skipif(not ON_CPU, reason="CPU acceleration")
def test_whisper_on_the_cpu_gets_numpy_ops_everywhere() -> None:
    model = _whisper()
    mel = mx.array(np.random.default_rng(0).normal(size=(1, 80, 32)).astype(np.float32))
    want = model.encode(mel)
    accelerate_whisper(model, Settings())
    users = [m for _, m in model.named_modules() if hasattr(m, "ops")]
    assert users and all(m.ops is model.ops for m in users) and model.ops is not MLX_OPS
    assert isinstance(_steps(model), NumpyWindowSteps)
    for (k1, v1), (k2, v2) in zip(model.encode(mel), want):
        assert mx.allclose(k1, k2, atol=1e-4).item() and mx.allclose(v1, v2, atol=1e-4).item()


def test_chat_on_cuda_gets_the_decode_attention_patch(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVIDIA branch's wiring (the kernel itself: test_gpu_decode_attention.py)."""
    from app.accel import choose
    from app.accel.gpu import patch as gpu_patch
    from app.accel.gpu.linear import RowsLinear

    calls: list[str] = []
    monkeypatch.setattr(choose, "on_cpu", lambda: False)
    monkeypatch.setattr(choose, "on_cuda", lambda: True)
    def install() -> bool:
        calls.append("install")
        return True

    monkeypatch.setattr(gpu_patch.PATCH, "install", install)
    monkeypatch.setattr(gpu_patch.PATCH, "uninstall", lambda: calls.append("uninstall"))
    loaded = load_hf(build_tiny_llama(tmp_path / "tiny"))
    assert accelerate_chat(loaded, Settings()) == "gpu decode attention"
    assert loaded.decode_step is None and calls == ["install"]
    calls.clear()
    assert accelerate_chat(loaded, Settings(gpu_fast_kernels=False)) == "mlx"
    assert calls == ["uninstall"]
    assert accelerate_chat(loaded, Settings(gpu_rows_matmul=True)) == \
        "gpu decode attention, few-row matmuls"
    assert isinstance(loaded.model.layers[0].mlp.gate_proj, RowsLinear)
    accelerate_chat(loaded, Settings())  # off again: MLX's own class back
    assert not isinstance(loaded.model.layers[0].mlp.gate_proj, RowsLinear)
