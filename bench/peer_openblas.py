"""`mlx_lm.server` with Debian's OpenBLAS preloaded exactly the way mlxd loads it.

    python bench/peer_openblas.py --model DIR --port PORT [mlx_lm.server flags]

app.accel.process.prepare_process() sets mlxd's CPU process tuning and ctypes-loads OpenBLAS
with RTLD_GLOBAL before mlx.core is imported, so MLX's cblas_sgemm resolves to it;
everything else is mlx_lm.server's main.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's `app`

from app.accel.process import prepare_process  # noqa: E402

info = prepare_process().blas
if info.name != "openblas":
    sys.exit(f"peer_openblas: OpenBLAS could not be loaded ({info.name}); refusing to run "
             "a plain peer under this name")

from mlx_lm.server import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "mlx_lm.server"
    main()
