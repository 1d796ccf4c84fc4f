"""What a loaded model computes with: decided once, at load, by the model manager.

On an x86 CPU under `mlx[cpu]` with `Settings.cpu_fast_kernels` on:
- chat models: mlx-lm's attention and SwiGLU go to the polynomial-exp kernels
  (mlx_lm_patch.py; process-wide), and decode steps run in numpy with panel matmuls
  where `CpuLlamaDecoder` covers the model (`LoadedChatModel.decode_step`); 4/8-bit
  weights (a GGUF's Q4_0/Q4_1/Q8_0 kept packed, `cpu_keeps_quantized`; MLX quantized
  folders) decode through the C kernels of quantized.py and prefill by dequantizing one
  layer at a time (quantized_prefill.py);
- Whisper: decoder weights input-major, GELU and the encoder's softmax in numpy, the
  logits projection and decode steps through panels (`Whisper.use_ops`).
On an NVIDIA GPU with `Settings.gpu_fast_kernels` on: chat models' batched decode
attention runs one kernel of ours and short prefills' attention plain MLX ops, not cuDNN
graphs built per shape (app/accel/gpu/; mlx-lm patched process-wide); with
`Settings.gpu_rows_matmul` also few-row matmuls through gemv.py's kernel.
Everywhere else (Metal, or the settings off) models keep MLX's own ops; a chat model
loaded with its setting off also takes back an mlx-lm patch, were one installed.
"""

from __future__ import annotations

import logging

from app.accel.cpu import mlx_lm_patch, quantized, quantized_prefill, whisper_ops
from app.accel.cpu.bert_encoder import NumpyBertEncoder
from app.accel.cpu.llama_decoder import CpuLlamaDecoder
from app.accel.cpu.whisper_decoder import NumpyTextDecoder
from app.accel.gpu import linear as gpu_linear
from app.accel.gpu import patch as gpu_patch
from app.models.bert import LoadedEmbeddingModel
from app.models.device import on_cpu, on_cuda
from app.models.types import LoadedChatModel
from app.models.whisper.model import Whisper
from app.models.whisper.ops import WhisperOps
from app.settings import Settings

logger = logging.getLogger(__name__)

MLX_ONLY = "mlx"


def cpu_acceleration_wanted(settings: Settings) -> bool:
    return settings.cpu_fast_kernels and on_cpu()


def cpu_keeps_quantized(settings: Settings) -> bool:
    """Whether a loader should keep 4/8-bit weights packed on this CPU: our kernels for
    them exist here (built at first call)."""
    return cpu_acceleration_wanted(settings) and settings.cpu_quantized_weights and \
        quantized.available()


def accelerate_chat(loaded: LoadedChatModel, settings: Settings,
                    whole_layers: bool = True) -> str:
    """Choose `loaded`'s compute paths (sets `decode_step` and `acceleration`); returns
    the description that `acceleration` now holds. `whole_layers=False` (a tensor-parallel
    shard, whose projections end in a collective): only MLX ops inside the layers, and
    no decode steps of our own."""
    loaded.decode_step = None
    if not cpu_acceleration_wanted(settings):
        mlx_lm_patch.uninstall()
        quantized_prefill.uninstall(loaded.model)
        loaded.acceleration = MLX_ONLY
        gpu_linear.uninstall(loaded.model)
        if settings.gpu_fast_kernels and on_cuda() and gpu_patch.PATCH.install():
            loaded.acceleration = "gpu decode attention"
            if settings.gpu_rows_matmul and gpu_linear.install(loaded.model):
                loaded.acceleration += ", few-row matmuls"
        else:
            gpu_patch.PATCH.uninstall()
        return loaded.acceleration
    parts = []
    if mlx_lm_patch.install():
        parts.append("cpu kernels")
    if quantized_prefill.install(loaded.model):
        gemm = quantized_prefill.choose_gemm(loaded.model)
        parts.append("dequantizing prefill" + ("" if gemm is None else f" ({gemm.kept})"))
    if whole_layers:
        loaded.decode_step = CpuLlamaDecoder.build(loaded.model,
                                                   int8=settings.cpu_int8_activations)
    if loaded.decode_step is not None:
        parts.append("numpy decode steps")
        rows = getattr(loaded.decode_step, "prefill_rows", 0)
        if rows:  # the MLX prefill above then takes only longer chunks
            parts.append(f"prompt chunks of up to {rows} tokens in one C call")
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
