"""What a loaded model computes with: decided once, at load, by the model manager.

On an x86 CPU under `mlx[cpu]` with `Settings.cpu_fast_kernels` on:
- chat models: mlx-lm's attention and SwiGLU go to the polynomial-exp kernels
  (mlx_lm_patch.py; process-wide), and decode steps run in numpy with panel matmuls
  where `CpuLlamaDecoder` covers the model (`LoadedChatModel.decode_step`);
- Whisper: decoder weights input-major, GELU and the encoder's softmax in numpy, the
  logits projection and decode steps through panels (`Whisper.use_ops`).
Everywhere else (Metal, CUDA, or the setting off) models keep MLX's own ops; a chat
model loaded with the setting off also takes back the mlx-lm patch, were it installed.
"""

from __future__ import annotations

import logging

from app.accel.cpu import mlx_lm_patch, whisper_ops
from app.accel.cpu.bert_encoder import NumpyBertEncoder
from app.accel.cpu.llama_decoder import CpuLlamaDecoder
from app.accel.cpu.whisper_decoder import NumpyTextDecoder
from app.models.bert import LoadedEmbeddingModel
from app.models.device import on_cpu
from app.models.types import LoadedChatModel
from app.models.whisper.model import Whisper
from app.models.whisper.ops import WhisperOps
from app.settings import Settings

logger = logging.getLogger(__name__)

MLX_ONLY = "mlx"


def cpu_acceleration_wanted(settings: Settings) -> bool:
    return settings.cpu_fast_kernels and on_cpu()


def accelerate_chat(loaded: LoadedChatModel, settings: Settings) -> str:
    """Choose `loaded`'s compute paths (sets `decode_step` and `acceleration`); returns
    the description that `acceleration` now holds."""
    loaded.decode_step = None
    if not cpu_acceleration_wanted(settings):
        mlx_lm_patch.uninstall()
        loaded.acceleration = MLX_ONLY
        return loaded.acceleration
    parts = []
    if mlx_lm_patch.install():
        parts.append("cpu kernels")
    loaded.decode_step = CpuLlamaDecoder.build(loaded.model)
    if loaded.decode_step is not None:
        parts.append("numpy decode steps")
    loaded.acceleration = ", ".join(parts) or MLX_ONLY
    return loaded.acceleration


def accelerate_whisper(model: Whisper, settings: Settings) -> str:
    """Choose `model`'s ops (`Whisper.use_ops`); returns their name."""
    if not cpu_acceleration_wanted(settings):
        return model.ops.name
    model.store_decoder_input_major()
    projection = whisper_ops.Projection(model.decoder.token_embedding.weight)
    decoder = NumpyTextDecoder(model, projection)
    model.use_ops(WhisperOps(gelu=whisper_ops.gelu, attention=whisper_ops.attention,
                             project=projection, window_steps=decoder.window_steps,
                             name="cpu numpy ops and decode steps"))
    return model.ops.name


def accelerate_embedding(loaded: LoadedEmbeddingModel, settings: Settings) -> str:
    """Choose a sentence encoder's forward (the CPU's numpy encoder for float32 weights);
    returns what it computes with."""
    if cpu_acceleration_wanted(settings) and loaded.dtype == "float32":
        loaded.forward = NumpyBertEncoder(loaded.model)
        loaded.acceleration = "cpu numpy encoder"
    return loaded.acceleration
