"""Route mlx-lm's attention and SwiGLU to the CPU kernels (app/accel/cpu/kernels.py).

mlx-lm's llama, qwen2 and qwen3 modules look `scaled_dot_product_attention` and
`swiglu` up as module globals at every call, so pointing those names at our kernels
reaches every layer without copying a model class. That is an internal detail of
mlx-lm, so the patch is applied only to the versions it was tested with
(`TESTED_MLX_LM`, matching pyproject's bound) and only where both names exist;
anything else keeps mlx-lm's own functions and says so in the log.
`tests/engine/test_mlx_lm_patch.py` fails if a forward pass stops reaching them.

Process-wide: on an x86 CPU every model computes on the CPU. Never applied on a GPU,
whose kernels are already fused.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from typing import Any

from app.accel.cpu import kernels

logger = logging.getLogger(__name__)

# mlx-lm model modules that reach attention and SwiGLU through these module-level names.
PATCHED_MODULES = ("llama", "qwen2", "qwen3")  # mistral loads as llama
PATCHED_NAMES = ("scaled_dot_product_attention", "swiglu")
# major.minor releases of mlx-lm whose model modules were checked to look these names up.
TESTED_MLX_LM = ("0.32",)

_originals: dict[str, dict[str, Any]] = {}


def mlx_lm_version() -> str:
    return importlib.metadata.version("mlx-lm")


def refusal(version: str | None = None) -> str | None:
    """Why the patch must not be applied to this mlx-lm, or None when it may."""
    version = version or mlx_lm_version()
    if ".".join(version.split(".")[:2]) not in TESTED_MLX_LM:
        return f"mlx-lm {version} is not a tested release ({', '.join(TESTED_MLX_LM)}.x)"
    for name in PATCHED_MODULES:
        module = importlib.import_module(f"mlx_lm.models.{name}")
        missing = [n for n in PATCHED_NAMES if not callable(getattr(module, n, None))]
        if missing:
            return f"mlx_lm.models.{name} has no {', '.join(missing)}"
    return None


def install() -> bool:
    """Point the patched modules at our kernels; idempotent. False (mlx-lm's own
    functions stay) when `refusal()` gives a reason, which is logged."""
    if _originals:
        return True
    reason = refusal()
    if reason is not None:
        logger.warning("CPU kernels not installed into mlx-lm: %s", reason)
        return False
    ours = {"scaled_dot_product_attention": kernels.attention, "swiglu": kernels.swiglu}
    for name in PATCHED_MODULES:
        module = importlib.import_module(f"mlx_lm.models.{name}")
        _originals[name] = {n: getattr(module, n) for n in PATCHED_NAMES}
        for attr, fn in ours.items():
            setattr(module, attr, fn)
    logger.info("CPU kernels: polynomial exp for attention softmax and SwiGLU in mlx-lm's %s",
                ", ".join(PATCHED_MODULES))
    return True


def installed() -> bool:
    return bool(_originals)


def uninstall() -> None:
    """Restore mlx-lm's own functions (tests and benchmarks compare both)."""
    for name, saved in _originals.items():
        module = importlib.import_module(f"mlx_lm.models.{name}")
        for attr, fn in saved.items():
            setattr(module, attr, fn)
    _originals.clear()
