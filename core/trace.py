"""What one decode step looked like, per layer and head: the page draws only from these."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerTrace:
    """One layer at one step: true attention and policy scores per query head, kept rows per KV head."""

    true_probs: torch.Tensor  # [Hq, T] fp16
    scores: torch.Tensor | None  # [Hq, T] fp16, the policy's own per-head scores (None: rule-based or dense)
    kept: torch.Tensor | None  # [Hkv, K] int32 token indices read (None: dense layer)


@dataclass
class StepTrace:
    """All layers at one decode step (the current token is at `position`)."""

    position: int
    layers: dict[int, LayerTrace] = field(default_factory=dict)


@dataclass
class ReadStats:
    """Counts of K/V rows read against rows a dense step would read (the achieved sparsity), the memory
    a method reads beside them (its side cache, page bounds: `side`, in K/V-row equivalents), and the
    time spent tracing, so speed can be shown without the cost of the page's instrumentation."""

    read: int = 0
    total: int = 0
    side: float = 0.0
    trace_seconds: float = 0.0  # time spent recording traces (true attention, copies), not decoding

    def add(self, read: int, total: int, side: float = 0.0) -> None:
        self.read += read
        self.total += total
        self.side += side

    @property
    def sparsity(self) -> float:
        """1 - K/V rows read / rows a dense step reads."""
        return 1.0 - self.read / self.total if self.total else 0.0

    @property
    def byte_sparsity(self) -> float:
        """1 - (K/V rows + side reads) / dense rows: the saving in bytes, which can be negative."""
        return 1.0 - (self.read + self.side) / self.total if self.total else 0.0
