"""Metrics on hand-made cases with known answers, and the capture/selection pipeline on a tiny random Llama."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.budget import Budget
from core.capture import capture_views
from core.metrics import (
    attention_recall,
    budget_curves,
    hit_accuracy,
    layer_head_grid,
    row_indices,
    selection_hit,
    selection_metrics,
)
from core.models import LoadedModel
from core.policies import make_policy
from core.policies.base import LayerView, Policy
from core.policies.driver import replay
from core.trace import LayerTrace, StepTrace
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_llama(seed=0, layers=3)  # 3 layers: Quest (dense layers 0-1) is sparse in layer 2


def _causal_probs(heads: int, length: int, seed: int = 0) -> torch.Tensor:
    """[H, T, T] causal attention rows (zero beyond each row's past)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(heads, length, length, generator=g)
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    return torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)


def test_hit_accuracy_oracle_is_one_and_reverse_is_zero() -> None:
    probs = _causal_probs(3, 10)
    past = torch.arange(1, 11)
    assert torch.equal(hit_accuracy(probs, probs, past), torch.ones(3, 10))
    even = past % 2 == 0
    reverse = hit_accuracy(-probs, probs, past)
    assert torch.equal(reverse[:, even], torch.zeros(3, int(even.sum())))


def test_hit_accuracy_ignores_the_future_and_counts_k_over_the_past() -> None:
    probs = torch.tensor([[0.1, 0.6, 0.3, 0.0, 0.0, 0.0]])
    noisy_future = torch.tensor([[0.1, 0.6, 0.3, 9.0, 9.0, 9.0]])
    assert float(hit_accuracy(noisy_future, probs, 3)[0]) == 1.0  # k = ceil(0.5 * 3) = 2: {1, 2} both
    wrong_second = torch.tensor([[0.5, 0.6, 0.3, 9.0, 9.0, 9.0]])
    assert float(hit_accuracy(wrong_second, probs, 3)[0]) == 0.5


def test_hit_accuracy_of_random_scores_is_chance() -> None:
    probs = _causal_probs(8, 200)[:, 100:]
    scores = torch.rand(probs.shape, generator=torch.Generator().manual_seed(1))
    for frac in (0.25, 0.5):
        value = float(hit_accuracy(scores, probs, torch.arange(101, 201), frac).mean())
        assert abs(value - frac) < 0.03


def test_attention_recall_full_empty_and_by_hand() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])[:, None, :]  # two query heads, one KV head
    everything = torch.ones(1, 1, 4, dtype=torch.bool)
    assert torch.allclose(attention_recall(everything, probs, group=2), torch.ones(2, 1))
    assert torch.equal(attention_recall(torch.zeros_like(everything), probs, group=2), torch.zeros(2, 1))
    kept = torch.tensor([[[False, True, True, True]]])
    assert torch.allclose(attention_recall(kept, probs, group=2), torch.tensor([[0.9], [0.6]]))


def test_selection_hit_by_hand() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])[:, None, :]
    kept = torch.tensor([[[False, True, False, True]]])  # reads {1, 3}; true top-2 are {2, 3} and {0, 1}
    assert torch.allclose(selection_hit(kept, probs, group=2), torch.tensor([[0.5], [0.5]]))


def test_layer_head_grid_from_a_trace() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    trace = StepTrace(position=3, layers={
        0: LayerTrace(true_probs=probs.half(), scores=None, kept=None),
        1: LayerTrace(true_probs=probs.half(), scores=probs.half(), kept=torch.tensor([[1, 3]], dtype=torch.int32)),
    })
    grid = layer_head_grid(trace, num_layers=3, num_heads=2)
    assert np.isnan(grid["hit_accuracy"][0]).all() and np.allclose(grid["recall"][0], 1.0)
    assert np.allclose(grid["hit_accuracy"][1], 1.0)
    assert np.allclose(grid["recall"][1], [0.6, 0.4], atol=1e-3)
    assert np.isnan(grid["recall"][2]).all()


def test_view_rows_keep_the_same_attention_rows(lm: LoadedModel) -> None:
    views = capture_views(lm, torch.randint(0, 128, (40,)))
    assert sorted(views) == [0, 1, 2]
    assert views[1].query.shape == (1, 4, 40, 16) and views[1].key.shape == (1, 2, 40, 16)
    rows = torch.tensor([5, 39])
    full = views[1].true_probs()
    restricted = views[1].rows(rows)
    assert torch.equal(restricted.positions, rows)
    assert torch.allclose(restricted.true_probs(), full[:, :, rows])


class _CountingPolicy(Policy):
    """Counts forward calls through a hook, to see that capture_views attaches and then removes it."""

    name = "counting-test"
    calls = 0

    def attach(self, model: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        def hook(module, args) -> None:
            self.calls += 1

        return [model.model.layers[0].register_forward_pre_hook(hook)]


def test_capture_runs_policy_hooks_once_and_removes_them(lm: LoadedModel) -> None:
    policy = _CountingPolicy()
    ids = torch.randint(0, 128, (12,))
    capture_views(lm, ids, [policy])
    capture_views(lm, ids)
    assert policy.calls == 1


def test_stacked_stateful_replay_matches_layer_by_layer(lm: LoadedModel) -> None:
    ids, prompt_len, budget = torch.randint(0, 128, (48,)), 8, Budget(ratio=0.3)
    views = capture_views(lm, ids)
    rows = row_indices(6, 48, prompt_len)
    policy = make_policy("h2o")
    stats = selection_metrics(views, {"h2o": policy}, [budget], rows, prompt_len)["h2o"].budgets[budget.label]
    for layer in (1, 2):
        view = views[layer]
        fresh = LayerView(layer, view.query, view.key, view.scale, view.positions)
        kept = replay(policy, fresh, budget, prompt_len)[:, :, rows]
        expected = attention_recall(kept, view.true_probs()[:, :, rows], view.group).mean(dim=(0, 2))
        assert np.allclose(stats.recall[layer], expected.numpy(), atol=1e-6)


def test_budget_curves_shape_and_sanity(lm: LoadedModel) -> None:
    names = ["dense", "oracle", "h2o", "snapkv", "quest", "streaming", "random"]
    curves = budget_curves(lm, torch.randint(0, 128, (64,)), names, ["50%", "25%", "16"], rows=8, prompt_len=16)
    assert list(curves) == names and set(curves["oracle"]) == {"50%", "25%", "16 tok"}
    assert curves["dense"]["50%"] == pytest.approx({"hit_accuracy": 1.0, "recall": 1.0, "achieved_sparsity": 0.0})
    for label in ("50%", "25%", "16 tok"):
        oracle = curves["oracle"][label]
        assert 0.0 < oracle["achieved_sparsity"] < 1.0
        for name in ("h2o", "streaming", "random"):  # oracle keeps the most group mass (Quest: layer 1 is dense)
            assert oracle["recall"] >= curves[name][label]["recall"] - 1e-6
    assert curves["random"]["25%"]["recall"] < curves["random"]["50%"]["recall"]
    # layer 0 of 3 stays dense: about two thirds of the nominal 50% is achieved on rows after the prompt
    assert math.isclose(curves["streaming"]["50%"]["achieved_sparsity"], 1 / 3, abs_tol=0.05)
