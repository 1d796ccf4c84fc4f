"""Route mlx-lm's attention and SwiGLU to the CPU kernels (app/accel/cpu/kernels.py),
through app/accel/mlx_lm_patch.py. `tests/engine/test_mlx_lm_patch.py` fails if a forward
pass stops reaching them.

Process-wide: on an x86 CPU every model computes on the CPU. Never applied on a GPU,
whose kernels are already fused.
"""

from __future__ import annotations

from typing import Any

from app.accel.cpu import kernels
from app.accel.mlx_lm_patch import ModulePatch


def _names() -> dict[str, Any]:
    return {"scaled_dot_product_attention": kernels.attention, "swiglu": kernels.swiglu}


PATCH = ModulePatch("CPU kernels (polynomial exp for attention softmax and SwiGLU)", _names)
install = PATCH.install
installed = PATCH.installed
uninstall = PATCH.uninstall
refusal = PATCH.refusal
