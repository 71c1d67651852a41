"""The predictor's training losses on hand-made rows: each rewards the ordering it is meant to reward."""

import pytest
import torch

from core.losses import LOSSES, row_loss, true_top


def rows(t: int = 40, r: int = 3, heads: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """True logits [1, heads, r, t] and a causal mask: row i reads the first t - r + i + 1 tokens."""
    true = torch.randn(1, heads, r, t, generator=torch.Generator().manual_seed(seed)) * 2
    positions = torch.arange(t - r, t)
    return true, torch.arange(t)[None, :] <= positions[:, None]


def test_true_top_counts_the_causal_past_and_breaks_ties_to_the_earlier_token() -> None:
    true = torch.tensor([[[[1.0, 3.0, 3.0, 0.0, 9.0]]]])
    causal = torch.tensor([[True, True, True, True, False]])  # 4 tokens of past: 10% keeps one
    chosen = true_top(true, causal, 0.1)
    assert chosen.tolist() == [[[[False, True, False, False, False]]]]
    assert true_top(true, causal, 0.5).sum() == 2


@pytest.mark.parametrize("kind", LOSSES)
def test_the_truth_scores_better_than_its_reverse(kind: str) -> None:
    true, causal = rows()
    gen = torch.Generator().manual_seed(1)
    right = row_loss(true.clone(), true, causal, kind, gen)
    wrong = row_loss(-true, true, causal, kind, torch.Generator().manual_seed(1))
    assert torch.isfinite(right) and torch.isfinite(wrong)
    assert right < wrong


def test_rank_loss_vanishes_when_the_top_is_far_above_the_rest() -> None:
    true, causal = rows()
    top = true_top(true, causal, 0.1)
    pred = torch.where(top, torch.full_like(true, 50.0), torch.zeros_like(true))
    assert row_loss(pred, true, causal, "rank", torch.Generator().manual_seed(0)) < 1e-6


def test_bce_is_balanced_between_the_two_classes() -> None:
    """A flat prediction sits on its own cut: log 2 for every token, whatever the class sizes."""
    true, causal = rows()
    flat = torch.zeros_like(true)
    assert row_loss(flat, true, causal, "bce") == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_kl_top_ignores_tokens_outside_the_selected_set() -> None:
    true, causal = rows()
    top = true_top(true, causal, 0.1)
    pred = torch.where(top, true, true - 7.0 * torch.rand_like(true))  # anything outside the set
    assert row_loss(pred, true, causal, "kl-top") < 1e-6
    assert row_loss(pred, true, causal, "kl") > 1e-3


def test_an_unknown_loss_is_refused() -> None:
    true, causal = rows()
    with pytest.raises(ValueError, match="loss must be one of"):
        row_loss(true, true, causal, "hinge")
