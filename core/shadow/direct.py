"""The importance criteria are judged by: how much a prompt's loss rises when a unit is really removed.

- `ablation`: each head (or block of neurons) removed alone, on top of a base mask (the dense model,
  or a partly pruned one: a unit's importance in the context where it would be cut); one masked
  forward per unit, several per batch. Brute force, so it is the truth a criterion approximates.
- `pruning_order`: removal in rounds; each round measures the units still kept in the context of
  those already removed (by ablation, or by a gradient criterion computed under the mask) and removes
  the least important share. The order becomes scores (removed earlier = lower), so one ranking
  serves every sparsity up to the last round's.

Both are far too slow for the page (hundreds of forwards a prompt); the criteria comparison uses them
on held-out windows to say which cheap criterion prunes like the truth.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.models import LoadedModel
from core.shadow.importance import UnitScores, capture
from core.shadow.masking import ShadowMask, masked
from core.shadow.sweep import masked_nll
from core.spec import FIRST_SPARSE_LAYER

UNITS = ("heads", "neurons")
Measure = Callable[[ShadowMask], torch.Tensor]  # base mask -> [L, U] importance of each unit in its context


def _unit_tensor(mask: ShadowMask, unit: str) -> torch.Tensor:
    if unit not in UNITS:
        raise ValueError(f"Unknown unit {unit!r}; choose from {', '.join(UNITS)}.")
    return mask.heads if unit == "heads" else mask.neurons


def _replace(mask: ShadowMask, unit: str, values: torch.Tensor) -> ShadowMask:
    """`mask` with one unit kind's keep values replaced."""
    return ShadowMask(values.clone(), mask.neurons) if unit == "heads" else ShadowMask(mask.heads, values.clone())


def _without(base: ShadowMask, unit: str, layer: int, units: slice) -> ShadowMask:
    values = _unit_tensor(base, unit).clone()
    values[layer, units] = 0.0
    return _replace(base, unit, values)


def ablation(lm: LoadedModel, ids: torch.Tensor, base: ShadowMask | None = None, unit: str = "heads",
             block: int = 1, first_layer: int = FIRST_SPARSE_LAYER) -> torch.Tensor:
    """[L, U / block] rise of the mean next-token loss over `ids` when each unit (block of `block` consecutive
    units) still kept by `base` is removed alone; NaN for layers below `first_layer` and removed blocks."""
    base = base or ShadowMask.dense(lm.spec)
    kept = _unit_tensor(base, unit)
    layers, width = kept.shape
    if width % block:
        raise ValueError(f"A block of {block} does not divide the {width} {unit} of a layer.")
    jobs = [(layer, b) for layer in range(first_layer, layers) for b in range(width // block)
            if kept[layer, b * block : (b + 1) * block].any()]
    masks = [base] + [_without(base, unit, layer, slice(b * block, (b + 1) * block)) for layer, b in jobs]
    losses = masked_nll(lm, ids, masks, start=1)
    rise = torch.full((layers, width // block), float("nan"))
    for (layer, b), loss in zip(jobs, losses[1:], strict=True):
        rise[layer, b] = loss - losses[0]
    return rise


def ablation_measure(lm: LoadedModel, ids: torch.Tensor, unit: str, block: int = 1) -> Measure:
    """Ablation in the context of a base mask, spread back to single units (a block's rise for each of its units)."""
    return lambda base: ablation(lm, ids, base, unit, block).repeat_interleave(block, dim=-1)


def criterion_measure(lm: LoadedModel, ids: torch.Tensor, unit: str, criterion: str = "plainact") -> Measure:
    """A gradient or activation criterion computed with the base mask applied (removed units score 0): the
    raw score, in units of the loss, comparable across layers."""

    def measure(base: ShadowMask) -> torch.Tensor:
        with masked(lm, base):
            scores = capture(lm, ids, [criterion]).scores[criterion]
        return getattr(scores, unit)[0]

    return measure


def pruning_order(measure: Measure, dense: ShadowMask, unit: str, rounds: int, upto: float,
                  first_layer: int = FIRST_SPARSE_LAYER) -> torch.Tensor:
    """[L, U] scores from removal in `rounds` rounds of equal size up to `upto` of the prunable units of one kind:
    each round removes the kept units `measure` finds least important in the context of the removals so far.
    Units removed in round r score r + (their place in the round) / n; units never removed score above every
    removed one (in the order of the last measurement), units of layers below `first_layer` above all."""
    if not 0 < upto < 1 or rounds < 1:
        raise ValueError(f"Need 0 < upto < 1 and rounds >= 1, got {upto} and {rounds}.")
    kept = _unit_tensor(dense, unit).clone()
    prunable = torch.zeros_like(kept, dtype=torch.bool)
    prunable[first_layer:] = True
    per_round = max(1, round(upto * int(prunable.sum()) / rounds))
    order = torch.full(kept.shape, float(rounds + 1))
    importance = torch.zeros_like(kept)
    for r in range(rounds):
        importance = measure(_replace(dense, unit, kept)).float()
        candidates = prunable & (kept > 0)
        for place, flat in enumerate(importance.masked_fill(~candidates, float("inf")).flatten().argsort()[:per_round]):
            order.view(-1)[flat] = r + place / per_round
            kept.view(-1)[flat] = 0.0
    left = prunable & (kept > 0)
    if left.any():
        last = importance[left]
        order[left] = rounds + (last - last.min()) / (last.max() - last.min()).clamp_min(1e-12) * 0.999
    return order


def removal_scores(lm: LoadedModel, measures: dict[str, Measure], rounds: int, upto: float) -> UnitScores:
    """Heads and neurons each ranked by `pruning_order` with their measure (the other kind left dense)."""
    dense = ShadowMask.dense(lm.spec)
    return UnitScores(*(pruning_order(measures[u], dense, u, rounds, upto) for u in UNITS))
