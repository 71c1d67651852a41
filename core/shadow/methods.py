"""Every way to rank heads and neurons, in one per-layer normalized space so one mask rule serves them all.

- predicted: the ShadowLLM predictor, from layer 0's output over the prompt
- plainact / fisher: the prompt's true importance (an oracle: it needs a backward pass), per-layer normalized
- plainact-raw: plainact in its own units (loss units, comparable across layers), not normalized
- plainact-iterative: plainact recomputed in rounds, each under the mask of the removals so far
- direct: the loss rise when each head (block of neurons) is removed alone (`core.shadow.direct`; the
  brute-force truth a criterion approximates, hundreds of forwards a prompt)
- magnitude: the prompt's activation norms (DejaVu-like, an oracle of magnitude rather than a predictor)
- contribution: the norm of what each unit writes to the residual stream over the prompt (an oracle, forward only)
- static: the training prompts' average normalized importance under the criterion the predictor learned
  (magnitude for the shipped one), the same for every input
- random: seeded random scores
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from core.models import LoadedModel
from core.shadow.direct import ablation_measure, criterion_measure, removal_scores
from core.shadow.importance import Capture, UnitScores
from core.shadow.predictor import ShadowPredictor

METHODS = ("predicted", "plainact", "plainact-raw", "plainact-iterative", "direct", "fisher", "magnitude",
           "contribution", "static", "random")
NEEDS_PREDICTOR = ("predicted", "static")
NEEDS_MODEL = ("plainact-iterative", "direct")  # they run the model again, under masks
ROUNDS = 6  # rounds of plainact-iterative, each removing 1/6 of ...
UPTO = 0.75  # ... this share of the units (the largest sparsity evaluated)
NEURON_BLOCK = 64  # neurons removed together by the direct measure


def check_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown or no ranking methods {list(unknown)}; choose from {', '.join(METHODS)}.")
    return list(methods)


def criteria_for(methods: Sequence[str]) -> list[str]:
    """Importance criteria a capture pass must compute for these methods (plainact always: it is the reference)."""
    return list(dict.fromkeys(["plainact", *(m for m in methods if m in ("fisher", "magnitude", "contribution"))]))


def _rerun_scores(method: str, lm: LoadedModel, prompt: torch.Tensor) -> UnitScores:
    """[1, L, ...] scores of the methods that run the model again under masks."""
    if method == "direct":
        block = math.gcd(NEURON_BLOCK, lm.spec.intermediate_size)
        measures = {"heads": ablation_measure(lm, prompt, "heads"), "neurons": ablation_measure(lm, prompt, "neurons",
                                                                                                 block)}
        scores = removal_scores(lm, measures, rounds=1, upto=UPTO)
    else:
        measures = {unit: criterion_measure(lm, prompt, unit) for unit in ("heads", "neurons")}
        scores = removal_scores(lm, measures, rounds=ROUNDS, upto=UPTO)
    return UnitScores(scores.heads[None], scores.neurons[None])


@torch.no_grad()
def method_scores(cap: Capture, methods: Sequence[str], predictor: ShadowPredictor | None = None,
                  seed: int = 0, lm: LoadedModel | None = None, prompt: torch.Tensor | None = None,
                  ) -> dict[str, UnitScores]:
    """Scores [B, L, ...] of each method for the captured prompts (all on the CPU), comparable across layers:
    per-layer normalized, in loss units (plainact-raw) or a removal order (iterative, direct). The methods
    that run the model again need `lm` and the one captured `prompt`."""
    if predictor is None and any(m in NEEDS_PREDICTOR for m in methods):
        raise ValueError(f"The methods {', '.join(NEEDS_PREDICTOR)} need a trained ShadowLLM predictor.")
    if (lm is None or prompt is None) and any(m in NEEDS_MODEL for m in methods):
        raise ValueError(f"The methods {', '.join(NEEDS_MODEL)} run the model again: pass the model and prompt.")
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
        elif method == "plainact-raw":
            tiny = torch.finfo(true.heads.dtype).tiny
            out[method] = UnitScores(true.heads.clamp_min(tiny).log(), true.neurons.clamp_min(tiny).log())
        elif method in NEEDS_MODEL:
            with torch.enable_grad():
                out[method] = _rerun_scores(method, lm, prompt)
        else:
            out[method] = cap.scores[method].normalized()
    return out
