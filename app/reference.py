"""What the page keeps between clicks: dense references and the newest prompt's prefill.

The dense run a method is compared with depends only on the model, the prompt and the sampling
settings, so switching method or budget need not decode it again: `REFERENCES` keeps the last few,
keyed by exactly those. The prefill is dense for every method, so `PREFILLS` keeps the newest
prompt's (one: a long prompt's cache and queries are large) and a method switch skips it too.
Both are shared by every visitor (a reference is the same for anyone who asks) and thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.markup import RunSummary
from core.decode import GenerationConfig, Prefilled

REFERENCES_KEPT = 32
PREFILLS_KEPT = 1

Key = TypeVar("Key")
Value = TypeVar("Value")


@dataclass(frozen=True)
class RunKey:
    """What a dense run depends on: model, prompt tokens, and the sampling settings."""

    model: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int

    @classmethod
    def of(cls, model: str, prompt_ids: list[int], config: GenerationConfig) -> RunKey:
        return cls(model, tuple(prompt_ids), config.max_new_tokens, config.temperature, config.top_p, config.seed)


@dataclass
class DenseReference:
    """A finished dense run: its text, its tokens, its statistics and when it was made."""

    text: str
    ids: list[int]
    summary: RunSummary
    made_at: float = field(default_factory=time.time)

    def reused_note(self) -> str:
        return (f"Dense reference reused from {time.strftime('%H:%M:%S', time.localtime(self.made_at))} "
                "(same prompt and sampling settings): not decoded again.")


class Recent(Generic[Key, Value]):
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Key, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Value | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Key, value: Value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


REFERENCES: Recent[RunKey, DenseReference] = Recent(REFERENCES_KEPT)
PREFILLS: Recent[tuple[str, tuple[int, ...]], Prefilled] = Recent(PREFILLS_KEPT)
