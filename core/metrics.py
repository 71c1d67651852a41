"""How good a selection is, measured against the dense model's true attention.

- hit accuracy (the paper's): overlap of a ranking's top-frac past tokens with the true top-frac, / k;
- selection hit: the same overlap for a kept set at a budget (k = tokens kept);
- attention recall: the share of the true attention mass that the kept set of a KV head holds.

The tensor functions are pure; `selection_metrics` / `budget_curves` run them over captured views
for many policies and budgets (capture once, select many times).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from core.budget import Budget
from core.capture import capture_views
from core.decode import resolve_policy
from core.models import LoadedModel
from core.policies import Policy
from core.policies.base import LayerView, descending_ranks
from core.policies.driver import replay, scorer_ranks
from core.spec import FIRST_SPARSE_LAYER
from core.trace import ReadStats, StepTrace

STACK_BYTES = 256 * 2**20  # bound on the stacked true logits when a stateful policy runs layers together

Rows = Literal["last", "all"] | int | torch.Tensor


def top_mask(values: torch.Tensor, keep: torch.Tensor | int, ranks: torch.Tensor | None = None) -> torch.Tensor:
    """[..., T] bool: the keep[...] largest entries of each row (`ranks`: their precomputed ranks)."""
    ranks = descending_ranks(values) if ranks is None else ranks
    return ranks < torch.as_tensor(keep, device=values.device)[..., None]


def top_count(past: torch.Tensor, frac: float) -> torch.Tensor:
    """ceil(frac * past), at least 1: how many of `past` tokens a fraction keeps (the metrics' and losses' k)."""
    return torch.ceil(frac * past.double() - 1e-9).clamp(min=1).long()


def hit_accuracy(
    scores: torch.Tensor, true_probs: torch.Tensor, past_len: torch.Tensor | int, frac: float = 0.5
) -> torch.Tensor:
    """[...]: |predicted top-k ∩ true top-k| / k with k = ceil(frac * past) (chance = frac).

    scores, true_probs: [..., T]; past_len (broadcastable to [...]): tokens row may read, the current
    one included; entries beyond it are ignored whatever they hold.
    """
    t = scores.shape[-1]
    past = torch.as_tensor(past_len, device=scores.device).expand(scores.shape[:-1])
    beyond = torch.arange(t, device=scores.device) >= past[..., None]
    keep = top_count(past, frac)
    predicted = top_mask(scores.float().masked_fill(beyond, float("-inf")), keep)
    true = top_mask(true_probs.float().masked_fill(beyond, float("-inf")), keep)
    return (predicted & true).sum(-1) / keep


def _per_query_head(kept_kv: torch.Tensor, group: int) -> torch.Tensor:
    """[..., Hkv, Q, T] -> [..., Hq, Q, T]: each query head reads its KV head's rows."""
    return kept_kv.repeat_interleave(group, dim=-3)


def attention_recall(kept_kv: torch.Tensor, true_probs: torch.Tensor, group: int) -> torch.Tensor:
    """[..., Hq, Q]: true attention mass of each query head that falls on its KV head's kept tokens.

    kept_kv: [..., Hkv, Q, T] bool; true_probs: [..., Hq, Q, T] (zero beyond each row's past).
    """
    return (true_probs.float() * _per_query_head(kept_kv, group)).sum(-1)


def selection_hit(
    kept_kv: torch.Tensor, true_probs: torch.Tensor, group: int, true_ranks: torch.Tensor | None = None
) -> torch.Tensor:
    """[..., Hq, Q]: hit accuracy of a kept set: |kept ∩ true top-|kept|| / |kept| per query head.

    Future tokens hold probability 0 and come after the past, so stable ranking never picks them.
    `true_ranks` (descending_ranks of true_probs) may be passed when many kept sets are scored.
    """
    kept = _per_query_head(kept_kv, group)
    keep = kept.sum(-1).clamp(min=1)
    return (kept & top_mask(true_probs, keep, true_ranks)).sum(-1) / keep


def layer_head_grid(trace: StepTrace, num_layers: int, num_heads: int, frac: float = 0.5) -> dict[str, np.ndarray]:
    """[L, Hq] hit accuracy (of the policy's own scores) and recall (of the kept rows) at one decode step.

    NaN where the trace has no layer or no scores (rule-based policies); a dense layer recalls 1.
    """
    grid = {key: np.full((num_layers, num_heads), np.nan) for key in ("hit_accuracy", "recall")}
    for layer, lt in trace.layers.items():
        probs = lt.true_probs.float()[:, None, :]  # [Hq, 1, T]
        t = probs.shape[-1]
        if lt.scores is not None:
            grid["hit_accuracy"][layer] = hit_accuracy(lt.scores.float()[:, None, :], probs, t, frac)[:, 0].numpy()
        if lt.kept is None:
            grid["recall"][layer] = 1.0
        else:
            kept = torch.zeros(lt.kept.shape[0], 1, t, dtype=torch.bool).scatter_(-1, lt.kept.long()[:, None, :], True)
            grid["recall"][layer] = attention_recall(kept, probs, num_heads // lt.kept.shape[0])[:, 0].numpy()
    return grid


@dataclass
class SelectionStats:
    """One policy at one budget, per layer: means over heads and scored rows, and K/V rows read."""

    hit: np.ndarray  # [L, Hq] selection hit
    recall: np.ndarray  # [L, Hq]
    read: np.ndarray  # [L] K/V rows read over rows at or after prompt_len
    total: np.ndarray  # [L] rows a dense pass would read there

    def summary(self) -> dict[str, float]:
        """Hit and recall averaged over layers >= 1 and heads; achieved sparsity over all layers."""
        total = float(self.total.sum())
        return {
            "hit_accuracy": float(self.hit[FIRST_SPARSE_LAYER:].mean()),
            "recall": float(self.recall[FIRST_SPARSE_LAYER:].mean()),
            "achieved_sparsity": ReadStats(float(self.read.sum()), total).sparsity,
        }


@dataclass
class PolicyStats:
    """A policy over budgets, plus its budget-free ranking quality (the paper's hit accuracy at 50%)."""

    budgets: dict[str, SelectionStats]
    ranking_hit: np.ndarray | None  # [L, Hq] mean over the scored rows; None for policies with no per-token scores
    ranking_hit_last: np.ndarray | None  # [L, Hq] the last scored row only (the paper's definition)


def row_indices(rows: Rows, length: int, prompt_len: int) -> torch.Tensor:
    """Query rows to score: the last, all after the prompt, n evenly spaced after it, or given indices."""
    if isinstance(rows, torch.Tensor):
        return rows.long()
    if rows == "last":
        return torch.tensor([length - 1])
    start = min(prompt_len, length - 1)
    if rows == "all":
        return torch.arange(start, length)
    return torch.linspace(start, length - 1, min(int(rows), length - start)).round().long().unique()


def _stacked(views: Sequence[LayerView]) -> LayerView:
    """Layers stacked along the batch axis (under the first one's index)."""
    first = views[0]
    query = torch.cat([v.query for v in views])
    key = torch.cat([v.key for v in views])
    return LayerView(first.layer, query, key, first.scale, first.positions)


def _replayed_masks(
    policy: Policy, views: dict[int, LayerView], budgets: Sequence[Budget], rows: torch.Tensor, prompt_len: int
) -> Iterator[tuple[Budget, int, torch.Tensor]]:
    """(budget, layer, kept [B, Hkv, Q, T]) for a recurrence's sparse layers, replayed over the whole sequence.

    A recurrence's state is per sequence and head, so to it layers are independent sequences: they
    run stacked on the batch axis (the row-by-row replay would otherwise dominate the cost), in
    stacks whose true logits fit in STACK_BYTES and are computed once for all budgets.
    """
    layers = [layer for layer in views if policy.is_sparse_layer(layer)]
    if not layers:
        return
    first = views[layers[0]]
    b, hq, t = first.query.shape[0], first.query.shape[1], first.context
    per_stack = max(1, STACK_BYTES // (b * hq * t * t * 4))
    for start in range(0, len(layers), per_stack):
        stack = layers[start : start + per_stack]
        stacked = _stacked([views[layer] for layer in stack])
        for budget in budgets:
            masks = replay(policy, stacked, budget, prompt_len)[:, :, rows]
            for i, layer in enumerate(stack):
                yield budget, layer, masks[i * b : (i + 1) * b]


class _Tally:
    """Per-layer accumulation of one policy at one budget; the true ranks are shared by every tally."""

    def __init__(self, num_layers: int, num_heads: int, true_ranks: dict[int, torch.Tensor]) -> None:
        self.stats = SelectionStats(
            hit=np.full((num_layers, num_heads), np.nan), recall=np.full((num_layers, num_heads), np.nan),
            read=np.zeros(num_layers), total=np.zeros(num_layers),
        )
        self.true_ranks = true_ranks

    def add(self, layer: int, kept: torch.Tensor, view: LayerView, prompt_len: int) -> None:
        probs, group = view.true_probs(), view.group
        if layer not in self.true_ranks:
            self.true_ranks[layer] = descending_ranks(probs)
        hit = selection_hit(kept, probs, group, self.true_ranks[layer])
        self.stats.hit[layer] = hit.mean(dim=(0, 2)).cpu().numpy()
        self.stats.recall[layer] = attention_recall(kept, probs, group).mean(dim=(0, 2)).cpu().numpy()
        late = view.positions >= prompt_len
        self.stats.read[layer] = int(kept[:, :, late].sum())
        self.stats.total[layer] = int((view.positions[late] + 1).sum()) * kept.shape[0] * kept.shape[1]


def _policy_stats(
    policy: Policy, views: dict[int, LayerView], scored: dict[int, LayerView], budgets: Sequence[Budget],
    rows: torch.Tensor, prompt_len: int, true_ranks: dict[int, torch.Tensor],
) -> PolicyStats:
    """Score one policy at every budget; a scorer's ranks are computed once for all budgets."""
    num_heads = next(iter(scored.values())).query.shape[1]
    tallies = {budget.label: _Tally(len(views), num_heads, true_ranks) for budget in budgets}
    ranks = policy.stateless and not policy.is_dense
    ranking = np.full((len(views), num_heads), np.nan) if ranks else None
    last = None if ranking is None else ranking.copy()
    for layer, view in scored.items():
        if not policy.is_sparse_layer(layer):
            everything = view.causal()[None, None].expand(view.key.shape[0], view.key.shape[1], -1, -1)
            for budget in budgets:
                tallies[budget.label].add(layer, everything, view, prompt_len)
        elif policy.stateless:
            head, kv_ranks = scorer_ranks(policy, view)
            hit = hit_accuracy(head, view.true_probs(), view.positions + 1)  # [B, Hq, rows]
            ranking[layer] = hit.mean(dim=(0, 2)).cpu().numpy()
            last[layer] = hit[:, :, -1].mean(dim=0).cpu().numpy()
            for budget in budgets:
                kept = kv_ranks < budget.row_keeps(view.positions, prompt_len)[:, None]
                tallies[budget.label].add(layer, kept, view, prompt_len)
    if not policy.stateless:
        for budget, layer, kept in _replayed_masks(policy, views, budgets, rows, prompt_len):
            tallies[budget.label].add(layer, kept, scored[layer], prompt_len)
    return PolicyStats({label: tally.stats for label, tally in tallies.items()}, ranking, last)


def selection_metrics(
    views: dict[int, LayerView], policies: dict[str, Policy],
    budgets: Sequence[Budget] | dict[str, Sequence[Budget]], rows: torch.Tensor, prompt_len: int = 0,
) -> dict[str, PolicyStats]:
    """Per policy and budget, per-layer hit, recall and reads on the chosen query rows of captured views.

    `budgets`: one list for every policy, or a list per policy name. Policies must have been begun (and
    their hooks run) by `capture_views` on the same pass; the true attention is shared by all of them.
    """
    per_policy = budgets if isinstance(budgets, dict) else dict.fromkeys(policies, budgets)
    rows = rows.to(next(iter(views.values())).key.device)
    scored = {layer: view.rows(rows) for layer, view in views.items()}
    true_ranks: dict[int, torch.Tensor] = {}
    return {name: _policy_stats(policy, views, scored, per_policy[name], rows, prompt_len, true_ranks)
            for name, policy in policies.items()}


def budget_curves(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    policy_names: Sequence[str | Policy],
    budgets: Sequence[Budget | str],
    rows: Rows = "last",
    prompt_len: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """policy -> budget label -> {hit_accuracy, recall, achieved_sparsity} for one prompt (the Budgets tab).

    hit_accuracy here is the selection hit at that budget (kept set vs true top-|kept|, per query head);
    the budget-free ranking hit accuracy of the paper is in `selection_metrics`.
    """
    policies = {}
    for item in policy_names:
        policy = resolve_policy(item)
        policies[policy.name] = policy
    parsed = [b if isinstance(b, Budget) else Budget.parse(b) for b in budgets]
    ids = input_ids.view(-1)
    views = capture_views(lm, ids, list(policies.values()))
    stats = selection_metrics(views, policies, parsed, row_indices(rows, ids.numel(), prompt_len), prompt_len)
    return {name: {label: sel.summary() for label, sel in ps.budgets.items()} for name, ps in stats.items()}
