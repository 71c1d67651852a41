"""Everything the page shows for one prompt, from one forward + backward and a few batched masked forwards.

The prompt is plain text after BOS, as the predictor's training windows were (no chat template). Masks come from
the prompt itself and perplexity is the prompt's own, so the curves say how much each ranking of this
input's heads and neurons costs on this input. The "truth" the predictor is judged against is the criterion it
was trained on (its config), so a predictor of magnitude is compared with true magnitude, not with plainact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.decode import PromptError, encode_prompt
from core.models import LoadedModel
from core.shadow.combine import parts, rank_mean, singles
from core.shadow.importance import Capture, UnitScores, capture
from core.shadow.masking import Setting, ShadowMask, check_scope, check_sparsity, choose_mask
from core.shadow.methods import criteria_for, method_scores
from core.shadow.predictor import ShadowPredictor
from core.shadow.ranking import layer_spearman, overall_spearman, rank_agreement
from core.shadow.sweep import masked_nll, perplexity
from core.spec import FIRST_SPARSE_LAYER

SIDE_BY_SIDE = ("predicted", "static", "magnitude", "plainact")  # with the predictor's criterion, each once
SWEEP = (0.25, 0.5, 0.75)
NEURON_BLOCK = 32


@dataclass
class PromptAnalysis:
    """Scores, masks and measurements of one prompt (scores per-layer normalized, [L, H] and [L, F])."""

    tokens: int
    head_sparsity: float
    neuron_sparsity: float
    scope: str
    truth: str  # the criterion the predictor was trained on: the method its predictions are judged against
    criterion: str  # what the predictor was trained to rank by, in words
    scores: dict[str, UnitScores]  # every shown method
    masks: dict[str, ShadowMask]  # every shown method at the chosen sparsities
    dense_ppl: float
    chosen_ppl: dict[str, float]  # every shown method at the chosen sparsities
    curves: dict[str, dict[str, list[float]]]  # unit -> method -> perplexity at each SWEEP level
    departure: dict[str, list[float] | float]  # how this prompt's ranking departs from the static one
    agreement: dict[str, float]  # Spearman's rho of predicted vs the true criterion (within layers, overall)


def with_bos(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """Prefix BOS when the tokenizer has one and the prompt lacks it: training and evaluation text starts so."""
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    if bos is None or ids[0, 0].item() == bos:
        return ids
    return torch.cat([torch.full_like(ids[:, :1], bos), ids], dim=1)


def neuron_blocks(values: torch.Tensor, block: int = NEURON_BLOCK) -> torch.Tensor:
    """[L, F] -> [L, ceil(F / block)]: the mean over each block of `block` consecutive neurons."""
    pad = (-values.shape[-1]) % block
    padded = torch.nn.functional.pad(values, (0, pad), value=float("nan"))
    return padded.unflatten(-1, (-1, block)).nanmean(dim=-1)


def _decisions_differ(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Share of units per prunable layer that one mask keeps and the other removes."""
    return (a != b)[FIRST_SPARSE_LAYER:].float().mean(dim=-1).tolist()


def shown_methods(truth: str) -> tuple[str, ...]:
    """The masks drawn side by side: predicted, the true criterion, static, magnitude and plainact, each once."""
    return tuple(dict.fromkeys(("predicted", truth, *SIDE_BY_SIDE[1:])))


def shown_scores(cap: Capture, shown: Sequence[str], predictor: ShadowPredictor, lm: LoadedModel,
                 prompt: torch.Tensor) -> dict[str, UnitScores]:
    """[L, ...] scores of each shown method; a combined criterion is the rank mean of its parts."""
    found = {m: s[0] for m, s in method_scores(cap, singles(shown), predictor, lm=lm, prompt=prompt).items()}
    return {m: found[m] if m in found else rank_mean(*(found[p] for p in parts(m))) for m in shown}


def departure_from_static(scores: dict[str, UnitScores], masks: dict[str, ShadowMask], truth: str) -> dict:
    """Per layer: rho of this prompt's true and predicted head ranking with the static one, and changed decisions.

    Keys are "true_..." (the predictor's criterion on this prompt) and "predicted_...".
    """
    static = scores["static"]
    out: dict = {}
    for name, method in (("true", truth), ("predicted", "predicted")):
        s = scores[method]
        out[f"{name}_heads_rho_by_layer"] = layer_spearman(s.heads, static.heads).tolist()
        out[f"{name}_heads_rho_overall"] = overall_spearman(s.heads, static.heads).item()
        out[f"{name}_neurons_rho_overall"] = overall_spearman(s.neurons, static.neurons).item()
        out[f"{name}_heads_changed_by_layer"] = _decisions_differ(masks[method].heads, masks["static"].heads)
        changed = _decisions_differ(masks[method].neurons, masks["static"].neurons)
        out[f"{name}_neurons_changed"] = sum(changed) / len(changed)
    return out


def _sweep_masks(scores: dict[str, UnitScores], methods: Sequence[str], scope: str) -> list[ShadowMask]:
    """Masks for every (unit, method, level) of the curves, in that order."""
    return [Setting(m, unit, s, scope).mask(scores[m]) for unit in ("heads", "neurons") for m in methods for s in SWEEP]


def analyze_prompt(lm: LoadedModel, predictor: ShadowPredictor, prompt: str, head_sparsity: float,
                   neuron_sparsity: float, scope: str = "global", max_tokens: int | None = None) -> PromptAnalysis:
    """True vs predicted importance, the masks at the chosen sparsities, and perplexity curves, for one prompt."""
    head_sparsity = check_sparsity(head_sparsity, "head sparsity")
    neuron_sparsity = check_sparsity(neuron_sparsity, "neuron sparsity")
    check_scope(scope)
    ids = with_bos(lm, encode_prompt(lm, prompt, chat=False))
    if ids.shape[1] < 2:
        raise PromptError("The prompt needs at least 2 tokens: the loss scores each token by the next one.")
    if max_tokens is not None and ids.shape[1] > max_tokens:
        raise PromptError(f"The prompt is {ids.shape[1]} tokens; the live analysis takes at most {max_tokens}.")
    truth = predictor.config.criterion
    shown = shown_methods(truth)
    cap = capture(lm, ids, criteria_for(singles(shown)))
    scores = shown_scores(cap, shown, predictor, lm, ids[0])
    chosen = {m: choose_mask(scores[m], head_sparsity, neuron_sparsity, scope) for m in shown}
    losses = masked_nll(lm, ids, [ShadowMask.dense(lm.spec), *chosen.values(), *_sweep_masks(scores, shown, scope)])
    ppl = [perplexity(x) for x in losses]
    curve_ppl = iter(ppl[1 + len(shown):])
    curves = {unit: {m: [next(curve_ppl) for _ in SWEEP] for m in shown} for unit in ("heads", "neurons")}
    return PromptAnalysis(
        tokens=ids.shape[1], head_sparsity=head_sparsity, neuron_sparsity=neuron_sparsity, scope=scope,
        truth=truth, criterion=predictor.config.target, scores=scores, masks=chosen, dense_ppl=ppl[0],
        chosen_ppl=dict(zip(shown, ppl[1 : 1 + len(shown)], strict=True)), curves=curves,
        departure=departure_from_static(scores, chosen, truth),
        agreement=rank_agreement(scores["predicted"], scores[truth]),
    )
