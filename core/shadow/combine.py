"""Criteria combined by rank: the equal-weight mean of two methods' global ranks, per unit kind.

Magnitude prunes best at moderate sparsity on the default model and plainact recomputed in rounds at high
sparsity; the mean of their ranks is lower than either at most sparsities (docs/shadowllm.md), so a
combination is a criterion a predictor can learn ("magnitude+plainact-iterative") and the page can show.
Ranks, not scores, are averaged: the two criteria live on different scales (a per-layer normalized log
magnitude and a removal order).
"""

from __future__ import annotations

import torch

from core.shadow.importance import UnitScores

COMBINATIONS = ("magnitude+plainact-iterative",)


def parts(criterion: str) -> tuple[str, ...]:
    """'a+b' -> ('a', 'b'); a single criterion -> (criterion,)."""
    return tuple(criterion.split("+"))


def singles(methods: list[str] | tuple[str, ...]) -> list[str]:
    """The single methods these methods need, each once, in order (a combination needs its parts)."""
    return list(dict.fromkeys(p for m in methods for p in parts(m)))


def global_ranks(scores: torch.Tensor) -> torch.Tensor:
    """[..., L, U] scores -> ranks over all L x U units of each leading index at once, scaled to [0, 1]."""
    flat = scores.flatten(-2).float()
    ranks = flat.argsort(dim=-1).argsort(dim=-1).float() / max(1, flat.shape[-1] - 1)
    return ranks.view_as(scores)


def rank_mean(*scores: UnitScores) -> UnitScores:
    """Equal-weight mean of the methods' global ranks, per unit kind."""
    return UnitScores(*(sum(global_ranks(getattr(s, unit)) for s in scores) / len(scores)
                        for unit in ("heads", "neurons")))
