"""Synthetic retrieval tasks: seeded generators whose answers lie where they say they are.

`make_samples(task, n, seed, filler_tokens)` gives text samples (the default filler is a few
paragraphs; `filler_tokens` scales it to about that many tokens); `encode_sample` turns one into token
ids with the answer's token positions, which the evaluation scores by argmax (teacher-forced tokens).
"""

from __future__ import annotations

from collections.abc import Callable

from core.tasks.base import EncodedSample, TaskSample, encode_sample
from core.tasks.coref import make_coref
from core.tasks.entities import make_entities

TASKS: dict[str, Callable[[int, int], TaskSample]] = {"coref": make_coref, "entities": make_entities}


class UnknownTaskError(ValueError):
    """A task name that is not in TASKS."""


def make_samples(task: str, n: int, seed: int = 0, filler_tokens: int = 0) -> list[TaskSample]:
    """`n` samples of a task; sample i depends only on (task, seed, i, filler_tokens)."""
    if task not in TASKS:
        raise UnknownTaskError(f"Unknown task {task!r}; choose from {', '.join(TASKS)}.")
    if n < 1:
        raise ValueError(f"Number of samples must be at least 1, got {n}.")
    if filler_tokens < 0:
        raise ValueError(f"Filler tokens must be >= 0 (0: the default few paragraphs), got {filler_tokens}.")
    return [TASKS[task](seed * 1_000_003 + i, filler_tokens) for i in range(n)]


__all__ = ["TASKS", "EncodedSample", "TaskSample", "UnknownTaskError", "encode_sample", "make_samples"]
