"""Every way to rank heads and neurons, in one per-layer normalized space so one mask rule serves them all.

- predicted: the ShadowLLM predictor, from layer 0's output over the prompt
- plainact / fisher: the prompt's true importance (an oracle: it needs a backward pass)
- magnitude: the prompt's activation norms (DejaVu-like, an oracle of magnitude rather than a predictor)
- static: the training prompts' average normalized plainact, the same for every input
- random: seeded random scores
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.shadow.importance import Capture, UnitScores
from core.shadow.predictor import ShadowPredictor

METHODS = ("predicted", "plainact", "fisher", "magnitude", "static", "random")
NEEDS_PREDICTOR = ("predicted", "static")


def check_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown or no ranking methods {list(unknown)}; choose from {', '.join(METHODS)}.")
    return list(methods)


def criteria_for(methods: Sequence[str]) -> list[str]:
    """Importance criteria a capture pass must compute for these methods (plainact always: it is the reference)."""
    return list(dict.fromkeys(["plainact", *(m for m in methods if m in ("fisher", "magnitude"))]))


@torch.no_grad()
def method_scores(cap: Capture, methods: Sequence[str], predictor: ShadowPredictor | None = None,
                  seed: int = 0) -> dict[str, UnitScores]:
    """Normalized scores [B, L, ...] of each method for the captured prompts (all on the CPU)."""
    if predictor is None and any(m in NEEDS_PREDICTOR for m in methods):
        raise ValueError(f"The methods {', '.join(NEEDS_PREDICTOR)} need a trained ShadowLLM predictor.")
    true = cap.scores["plainact"]
    out: dict[str, UnitScores] = {}
    for method in check_methods(methods):
        if method == "predicted":
            out[method] = predictor.predict(cap.features)
        elif method == "static":
            static = predictor.static()
            out[method] = UnitScores(static.heads.expand_as(true.heads), static.neurons.expand_as(true.neurons))
        elif method == "random":
            generator = torch.Generator().manual_seed(seed)
            out[method] = UnitScores(torch.rand(true.heads.shape, generator=generator),
                                     torch.rand(true.neurons.shape, generator=generator))
        else:
            out[method] = cap.scores[method].normalized()
    return out
