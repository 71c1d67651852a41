"""`@gpu` marks model work for ZeroGPU on Hugging Face Spaces; elsewhere it changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

try:
    import spaces
except ImportError:  # not on Spaces: run in place
    spaces = None


def gpu(fn: F) -> F:
    """Ask ZeroGPU for a GPU while `fn` runs (generators included) when `spaces` is installed."""
    return spaces.GPU(fn) if spaces is not None else fn
