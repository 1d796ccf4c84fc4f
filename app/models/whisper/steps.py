"""Work that pauses at natural boundaries so the engine can run chat steps in between.

A `Steps[R]` generator yields (nothing) after each piece of work (an encoder layer, a
decoder step) and returns R; `run_to_end` drives one in a single call.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

R = TypeVar("R")
Steps = Generator[None, None, R]


def run_to_end(steps: Steps[R]) -> R:
    """Drive a step generator to its end in one go; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
