"""How many past tokens a query may read: a ratio of the past or a fixed number of tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class BudgetError(ValueError):
    """A budget that cannot be honoured (zero, negative, a ratio above 1, both or neither given)."""


@dataclass(frozen=True)
class Budget:
    """Tokens each KV head reads per query. Sink and recent tokens a policy protects count toward it.

    ``ratio`` keeps ceil(ratio * past) tokens (sparsity = 1 - ratio); ``tokens`` keeps min(tokens, past).
    The past includes the current token, which every policy always keeps.
    """

    ratio: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.tokens is None):
            raise BudgetError(
                "Give a budget as exactly one of a ratio of the past (0 < r <= 1) or a token count (>= 1)."
            )
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or math.isnan(self.ratio):
                raise BudgetError(f"Budget ratio must be a number, got {self.ratio!r}.")
            if not 0.0 < self.ratio <= 1.0:
                raise BudgetError(f"Budget ratio must be in (0, 1], got {self.ratio}.")
        if self.tokens is not None:
            if isinstance(self.tokens, bool) or not isinstance(self.tokens, int):
                raise BudgetError(f"Budget tokens must be an integer, got {self.tokens!r}.")
            if self.tokens < 1:
                raise BudgetError(f"Budget tokens must be at least 1, got {self.tokens}.")

    @classmethod
    def parse(cls, text: str | float | int) -> Budget:
        """'0.5' or '50%' -> ratio; '256' -> tokens. Used by the CLI and the app."""
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return cls(ratio=float(text)) if isinstance(text, float) else cls(tokens=text)
        raw = str(text).strip()
        try:
            if raw.endswith("%"):
                ratio, tokens = float(raw[:-1]) / 100.0, None
            elif "." in raw or "e" in raw.lower():
                ratio, tokens = float(raw), None
            else:
                ratio, tokens = None, int(raw)
        except ValueError as err:
            raise BudgetError(
                f"Cannot read budget {text!r}: use a ratio like 0.5 or 50%, or a token count like 256."
            ) from err
        return cls(ratio=ratio) if tokens is None else cls(tokens=tokens)  # the constructor checks the range

    @classmethod
    def dense(cls) -> Budget:
        return cls(ratio=1.0)

    def keep(self, past: int) -> int:
        """Tokens kept when `past` tokens (the current one included) are available."""
        if self.ratio is not None:
            return max(1, min(past, math.ceil(self.ratio * past - 1e-9)))
        return min(past, self.tokens)

    def keep_on_device(self, past: torch.Tensor) -> torch.Tensor:
        """`keep` of a device tensor of past lengths, in tensor ops only (the static decode step: no host sync);
        the same float64 arithmetic as `keep`, so the counts are equal."""
        if self.ratio is None:
            return past.clamp(max=self.tokens)
        wanted = torch.ceil(self.ratio * past.double() - 1e-9).long()
        return torch.minimum(wanted, past).clamp(min=1)

    def row_keeps(self, positions: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """Tokens each query row keeps in one pass over a sequence: prompt rows (the dense prefill) read
        their whole past, later rows their budget, exactly as decoding the same tokens would."""
        keeps = [p + 1 if p < prompt_len else self.keep(p + 1) for p in positions.tolist()]
        return torch.tensor(keeps, device=positions.device)

    @property
    def label(self) -> str:
        return f"{self.ratio:.0%}" if self.ratio is not None else f"{self.tokens} tok"
