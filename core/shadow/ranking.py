"""How well one ranking of heads and neurons agrees with another: Spearman rank correlation, within layers
and over all prunable units at once (the global ranking masks are chosen from)."""

from __future__ import annotations

import torch

from core.shadow.importance import UnitScores
from core.spec import FIRST_SPARSE_LAYER


def _centered_ranks(x: torch.Tensor) -> torch.Tensor:
    ranks = x.argsort(dim=-1).argsort(dim=-1).float()
    return ranks - ranks.mean(dim=-1, keepdim=True)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho along the last dimension (ties broken by position)."""
    ra, rb = _centered_ranks(a.float()), _centered_ranks(b.float())
    return (ra * rb).sum(-1) / (ra.pow(2).sum(-1) * rb.pow(2).sum(-1)).sqrt().clamp_min(1e-12)


def layer_spearman(a: torch.Tensor, b: torch.Tensor, first_layer: int = FIRST_SPARSE_LAYER) -> torch.Tensor:
    """[..., L, U] pair -> [..., L - first_layer]: rho within each prunable layer."""
    return spearman(a[..., first_layer:, :], b[..., first_layer:, :])


def overall_spearman(a: torch.Tensor, b: torch.Tensor, first_layer: int = FIRST_SPARSE_LAYER) -> torch.Tensor:
    """[..., L, U] pair -> [...]: rho over every prunable unit at once (per-layer normalized scores)."""
    return spearman(a[..., first_layer:, :].flatten(-2), b[..., first_layer:, :].flatten(-2))


def rank_agreement(scores: UnitScores, reference: UnitScores,
                   first_layer: int = FIRST_SPARSE_LAYER) -> dict[str, float]:
    """Mean rho of `scores` against `reference` (over prompts and, within layers, over layers)."""
    out = {}
    for unit in ("heads", "neurons"):
        a, b = getattr(scores, unit), getattr(reference, unit)
        out[f"{unit}_within_layer"] = layer_spearman(a, b, first_layer).mean().item()
        out[f"{unit}_overall"] = overall_spearman(a, b, first_layer).mean().item()
    return out
