"""mlxd with another GIL switch interval: a probe for bench_gpu.py --mlxd-switch-interval.

    python3 bench/mlxd_switch_interval.py SECONDS [mlxd arguments...]

On a GPU the engine thread spends most of a step outside the GIL (MLX encoding and waiting
on kernels) and needs it back at once to build the next step, while the event loop thread
holds it to stream tokens; CPython makes a waiting thread wait up to the switch interval
(5 ms by default) before it asks the holder to let go, on the scale of a whole decode step
at 64 streams. Whether a shorter interval helps is a measurement, not a setting: this runs
mlxd unchanged after `sys.setswitchinterval(SECONDS)`.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.setswitchinterval(float(sys.argv[1]))
    sys.argv = ["mlxd", *sys.argv[2:]]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    runpy.run_module("app", run_name="__main__", alter_sys=True)
