"""Panel matmuls and the numpy thread pool against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from app.accel.cpu.panels import PanelMatmul, panel_width
from app.accel.cpu.threads import run_parts, split_range


@pytest.mark.parametrize("rows", [1, 3, 5])
@pytest.mark.parametrize("n_out", [16, 1000, 4099])  # one panel, several, a ragged last one
def test_panels_equal_one_matmul(rows: int, n_out: int) -> None:
    rng = np.random.default_rng(rows * n_out)
    w = rng.standard_normal((384, n_out), dtype=np.float32)
    b = rng.standard_normal(n_out, dtype=np.float32)
    x = rng.standard_normal((rows, 384), dtype=np.float32)
    mm = PanelMatmul(w, b, max_rows=5)
    got = mm(x)
    assert got.shape == (rows, n_out)
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-4)


def test_leading_axes_and_many_rows() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 300), dtype=np.float32)
    mm = PanelMatmul(w, max_rows=4)
    few = rng.standard_normal((2, 1, 64), dtype=np.float32)
    many = rng.standard_normal((3, 7, 64), dtype=np.float32)  # more rows than sized for
    np.testing.assert_allclose(mm(few), few @ w, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mm(many), many @ w, rtol=1e-5, atol=1e-4)


def test_panel_width_stays_small_and_aligned() -> None:
    for rows, n_in in [(1, 384), (5, 384), (8, 576), (5, 1536), (64, 4096)]:
        width = panel_width(rows, n_in)
        assert width in (16, 32, 64)
        assert width == 16 or rows * n_in * width <= 1 << 20


def test_split_range_covers_once() -> None:
    for n in (1, 2, 7, 100):
        for pieces in (1, 2, 3, 8):
            ranges = split_range(n, pieces)
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a < b for a, b in ranges)
            assert all(r[1] == s[0] for r, s in zip(ranges, ranges[1:], strict=False))


def test_run_parts_runs_all_and_reraises() -> None:
    out = np.zeros(10)

    def fill(r: tuple[int, int]) -> None:
        out[r[0] : r[1]] = np.arange(r[0], r[1])

    run_parts(fill, split_range(10, 4))
    np.testing.assert_array_equal(out, np.arange(10))

    def boom(i: int) -> None:
        if i == 2:
            raise ValueError("part 2")

    with pytest.raises(ValueError, match="part 2"):
        run_parts(boom, [0, 1, 2])
