"""Point names inside mlx-lm's model modules at functions of ours, reversibly.

mlx-lm's llama, qwen2 and qwen3 modules look `scaled_dot_product_attention` and
`swiglu` up as module globals at every call, so pointing those names elsewhere reaches
every layer without copying a model class. That is an internal detail of mlx-lm, so a
patch is applied only to the releases it was tested with (`TESTED_MLX_LM`, matching
pyproject's bound) and only where every name it replaces exists; anything else keeps
mlx-lm's own functions and says so in the log.

Each device wing has its own `ModulePatch` (the CPU's kernels, the GPU's decode
attention); one process computes on one device, so at most one holds a name at a time,
and installing a second over it is a programming error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# mlx-lm model modules that reach attention and SwiGLU through module-level names.
PATCHED_MODULES = ("llama", "qwen2", "qwen3")  # mistral loads as llama
# major.minor releases of mlx-lm whose model modules were checked to look these names up.
TESTED_MLX_LM = ("0.32",)

_holders: dict[str, ModulePatch] = {}  # name -> the patch that replaced it


def mlx_lm_version() -> str:
    return importlib.metadata.version("mlx-lm")


class ModulePatch:
    """Replaces `names()`'s keys in every PATCHED_MODULES module by their values."""

    def __init__(self, what: str, names: Callable[[], dict[str, Any]]) -> None:
        self.what = what  # for the log: what the patched names now run
        self._names = names  # called at install, so tests may swap the functions first
        self._originals: dict[str, dict[str, Any]] = {}

    def refusal(self, version: str | None = None) -> str | None:
        """Why the patch must not be applied to this mlx-lm, or None when it may."""
        version = version or mlx_lm_version()
        if ".".join(version.split(".")[:2]) not in TESTED_MLX_LM:
            return f"mlx-lm {version} is not a tested release ({', '.join(TESTED_MLX_LM)}.x)"
        for name in PATCHED_MODULES:
            module = importlib.import_module(f"mlx_lm.models.{name}")
            missing = [n for n in self._names() if not callable(getattr(module, n, None))]
            if missing:
                return f"mlx_lm.models.{name} has no {', '.join(missing)}"
        return None

    def install(self) -> bool:
        """Point the patched modules at ours; idempotent. False (mlx-lm's own functions
        stay) when `refusal()` gives a reason, which is logged."""
        if self._originals:
            return True
        reason = self.refusal()
        if reason is not None:
            logger.warning("%s not installed into mlx-lm: %s", self.what, reason)
            return False
        ours = self._names()
        held = [n for n in ours if _holders.get(n, self) is not self]
        if held:
            raise RuntimeError(f"{', '.join(held)} already patched by {_holders[held[0]].what}")
        for name in PATCHED_MODULES:
            module = importlib.import_module(f"mlx_lm.models.{name}")
            self._originals[name] = {n: getattr(module, n) for n in ours}
            for attr, fn in ours.items():
                setattr(module, attr, fn)
        _holders.update(dict.fromkeys(ours, self))
        logger.info("%s in mlx-lm's %s", self.what, ", ".join(PATCHED_MODULES))
        return True

    def installed(self) -> bool:
        return bool(self._originals)

    def uninstall(self) -> None:
        """Restore mlx-lm's own functions (tests and benchmarks compare both)."""
        for name, saved in self._originals.items():
            module = importlib.import_module(f"mlx_lm.models.{name}")
            for attr, fn in saved.items():
                setattr(module, attr, fn)
                _holders.pop(attr, None)
        self._originals.clear()
