"""The direct importance ShadowLLM's criteria are judged by: ablation equals brute-force removal, and
removal in rounds follows the importance measured in the context of what was removed before."""

from __future__ import annotations

import pytest
import torch

from core.shadow import ShadowMask
from core.shadow.direct import ablation, criterion_measure, pruning_order
from core.shadow.sweep import masked_nll


def _ids(length: int = 20) -> torch.Tensor:
    return torch.randint(0, 128, (length,), generator=torch.Generator().manual_seed(3))


def _removed(base: ShadowMask, unit: str, layer: int, units: slice) -> ShadowMask:
    heads, neurons = base.heads.clone(), base.neurons.clone()
    (heads if unit == "heads" else neurons)[layer, units] = 0
    return ShadowMask(heads, neurons)


@pytest.mark.parametrize(("unit", "block", "pruned"), [("heads", 1, False), ("heads", 1, True), ("neurons", 32, True)])
def test_ablation_equals_removing_each_unit_by_hand(tiny_lm, unit: str, block: int, pruned: bool) -> None:
    base = ShadowMask.dense(tiny_lm.spec)
    if pruned:  # in the context of a partly pruned model
        base.heads[2, 1] = 0
        base.neurons[1, :32] = 0
    rise = ablation(tiny_lm, _ids(), base, unit, block)
    reference = masked_nll(tiny_lm, _ids(), [base], start=1)[0]
    layers, width = rise.shape
    assert torch.isnan(rise[0]).all()  # layer 0 is never pruned
    for layer in range(1, layers):
        for b in range(width):
            units = slice(b * block, (b + 1) * block)
            if not (base.heads if unit == "heads" else base.neurons)[layer, units].any():
                assert torch.isnan(rise[layer, b])  # already removed
                continue
            by_hand = masked_nll(tiny_lm, _ids(), [_removed(base, unit, layer, units)], start=1)[0] - reference
            assert rise[layer, b].item() == pytest.approx(by_hand, abs=1e-5)


def test_rounds_of_removal_follow_the_importance_in_context() -> None:
    """Head b matters only once head a is gone: a one-shot ranking removes a and b at 50%, removal in rounds
    sees the dependence and removes a then c."""
    dense = ShadowMask(torch.ones(2, 4), torch.ones(2, 4))

    def measure(base: ShadowMask) -> torch.Tensor:
        heads = base.heads
        b = 5.0 if heads[1, 0] == 0 else 0.2
        return torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, b, 0.3, 0.4]]) * heads

    order = pruning_order(measure, dense, "heads", rounds=2, upto=0.5)
    a, b, c, d = order[1].tolist()
    assert a < c < 2 <= b and d >= 2 and b > d  # a, then c removed; b, the most important left, kept last
    assert order[0].min() > order[1].max()  # layer 0 is never a candidate
    assert measure(dense)[1].argsort()[:2].tolist() == [0, 1]  # at one shot, a and b would go


def test_a_criterion_under_a_mask_scores_removed_units_zero(tiny_lm) -> None:
    base = ShadowMask.dense(tiny_lm.spec)
    base.heads[1, :2] = 0
    scores = criterion_measure(tiny_lm, _ids()[None], "heads")(base)
    assert (scores[1, :2] == 0).all() and (scores[1, 2:] > 0).all()
