"""Few-row float32 matmuls against a large weight at memory speed on the CPU.

A decode step multiplies a handful of rows (beams, batched streams) by every weight, so
it is bound by reading the weights. OpenBLAS's sgemm first copies ("packs") the whole
weight into its blocked layout, then multiplies from that copy: for 5 rows by Whisper's
[384, 51864] projection that ran at 7.5 GB/s here (~10 ms), while a plain single-thread
read of memory runs at 17 GB/s. Below about a million multiply-adds per call OpenBLAS
takes an unpacked "small matrix" kernel that reads the weight as it lies. So the weight
is stored once as column panels narrow enough for that path, and one stacked numpy
matmul runs them all (numpy loops over the panels in C, with the GIL released). For that
projection: 3.3 ms, with the panels split over two threads (app/accel/cpu/threads.py)
since the weight is large (`bench/micro_cpu_decode.py`).
"""

from __future__ import annotations

import numpy as np

from app.accel.cpu.threads import run_parts, split_range

# OpenBLAS takes its small-matrix kernel up to 2^20 multiply-adds per call (x86-64
# AVX-512). Panels 64 columns wide read fastest there: 14-17 GB/s on one thread for
# 1-8 rows and 384-1536 inputs, against 6-10 GB/s at widths 16, 48, 96 or 128.
SMALL_KERNEL_MULTIPLY_ADDS = 1 << 20
PANEL_WIDTHS = (64, 32, 16)
PARALLEL_MIN_BYTES = 16 << 20  # see PanelMatmul.__init__


def panel_width(rows: int, n_in: int) -> int:
    """Columns per panel for up to `rows` x `n_in` inputs."""
    for width in PANEL_WIDTHS:
        if rows * n_in * width <= SMALL_KERNEL_MULTIPLY_ADDS:
            return width
    return PANEL_WIDTHS[-1]


class PanelMatmul:
    """y = x @ weight (+ bias), the panels sized for x of up to `max_rows` rows.

    weight: [n_in, n_out] float32 (input-major); it is copied into panels and not kept
    (the panels are the only copy). More rows still run through the panels, within
    -10%/+40% of one plain matmul here (16-200 rows), so no second copy is worth keeping.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None = None,
                 max_rows: int = 8) -> None:
        n_in, n_out = weight.shape
        self.n_in, self.n_out = n_in, n_out
        self.width = min(panel_width(max_rows, n_in), n_out)
        n_panels = -(-n_out // self.width)
        padded = np.zeros((n_in, n_panels * self.width), dtype=np.float32)
        padded[:, :n_out] = weight
        # [panel, n_in, width], each panel contiguous: the small kernel streams it in order
        self.panels = np.ascontiguousarray(
            padded.reshape(n_in, n_panels, self.width).transpose(1, 0, 2))
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)
        # One core reads a layer's weights about as fast as the memory delivers them;
        # splitting them over threads cost more in hand-offs than it gained (SmolLM2
        # batch-8 step: 48 ms with only the 113 MB vocabulary projection split, 52-54 ms
        # with every weight over 1-4 MB split).
        big = self.panels.nbytes >= PARALLEL_MIN_BYTES
        self.ranges = split_range(n_panels) if big else [(0, n_panels)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.n_in)
        rows = x2.shape[0]
        # one stacked matmul per thread: numpy loops over the panels in C, GIL released
        out = np.empty((self.panels.shape[0], rows, self.width), np.float32)
        run_parts(lambda r: np.matmul(x2, self.panels[r[0] : r[1]], out=out[r[0] : r[1]]),
                  self.ranges)
        y = out.transpose(1, 0, 2).reshape(rows, -1)[:, : self.n_out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.n_out)
