"""Synthetic retrieval tasks: seeded generators whose answers lie where they say they are.

`make_samples(task, n, seed)` gives text samples; `encode_sample` turns one into token ids with the
answer's token positions, which the evaluation scores by argmax (teacher-forced tokens).
"""

from __future__ import annotations

from collections.abc import Callable

from core.tasks.base import EncodedSample, TaskSample, encode_sample
from core.tasks.coref import make_coref
from core.tasks.entities import make_entities

TASKS: dict[str, Callable[[int], TaskSample]] = {"coref": make_coref, "entities": make_entities}


class UnknownTaskError(ValueError):
    """A task name that is not in TASKS."""


def make_samples(task: str, n: int, seed: int = 0) -> list[TaskSample]:
    """`n` samples of a task; sample i depends only on (task, seed, i)."""
    if task not in TASKS:
        raise UnknownTaskError(f"Unknown task {task!r}; choose from {', '.join(TASKS)}.")
    if n < 1:
        raise ValueError(f"Number of samples must be at least 1, got {n}.")
    return [TASKS[task](seed * 1_000_003 + i) for i in range(n)]


__all__ = ["TASKS", "EncodedSample", "TaskSample", "UnknownTaskError", "encode_sample", "make_samples"]
