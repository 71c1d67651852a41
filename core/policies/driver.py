"""From a policy's scores or recurrence to the rows each query reads, in both execution modes.

- decode: dense prefill (`prefill_state`), then one query per step (`decode_selection` -> indices to gather);
- teacher: one pass over a whole sequence (`teacher_mask` -> a keep mask per row).

A scorer's choice is its protected tokens (`protection`: the current token, then sinks and recent
tokens in cache order, all counted in the budget) followed by its best-scored other tokens, so both
modes agree by construction. A recurrence is replayed row by row by `replay`, through the very
`step` that decoding calls, so it agrees with decoding too (tests check both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from core.budget import Budget
from core.policies.base import (
    LayerView,
    Policy,
    ascending_positions,
    descending_ranks,
    pool_group,
    topk_padded,
    topk_sorted,
)


@dataclass
class Selection:
    """One decode step at one layer: the K/V rows read and the policy's own per-head scores."""

    indices: torch.Tensor  # [B, Hkv, K] ascending token indices
    scores: torch.Tensor | None  # [B, Hq, T] per query head (None: a recurrence, which draws no scores)


def protection(policy: Policy, view: LayerView) -> tuple[torch.Tensor, torch.Tensor]:
    """([Q, T] current token, [Q, T] other protected tokens): sinks and the recent window within each row's past."""
    cols = torch.arange(view.context, device=view.key.device)[None, :]
    pos = view.positions[:, None]
    current = cols == pos
    other = ((cols < policy.sinks) | (pos - cols < policy.recent)) & (cols < pos)
    return current, other


def scorer_ranks(policy: Policy, view: LayerView) -> tuple[torch.Tensor, torch.Tensor]:
    """(head scores [B, Hq, Q, T], ranks [B, Hkv, Q, T]): row q keeps the tokens ranked below its budget.

    Rank 0 is the current token, then the other protected tokens in cache order, then the others by
    pooled score (ties to the earlier token); the future ranks beyond every row's past.
    """
    head = policy.scores(view)
    pooled = pool_group(head.float(), view.group, policy.pool)
    current, other = protection(policy, view)
    protected = current | other
    free = view.causal() & ~protected
    ranks = descending_ranks(pooled.masked_fill(~free, float("-inf"))) + protected.sum(-1, keepdim=True)
    return head, torch.where(protected, torch.where(current, 0, other.cumsum(-1)), ranks)


def newest_rows(policy: Policy, pooled: torch.Tensor, keep: int) -> torch.Tensor | None:
    """A scorer's decode step by slices: pooled scores [..., T] of the newest row -> [..., keep] indices,
    or None when protection alone exceeds `keep`."""

    def best(start: int, stop: int, count: int) -> torch.Tensor:
        return topk_sorted(pooled[..., start:stop], count) + start

    return choose_newest(policy, pooled.shape[-1], keep, best, pooled.shape[:-1], pooled.device)


def choose_newest(
    policy: Policy, t: int, keep: int, best: Callable[[int, int, int], torch.Tensor], shape: tuple[int, ...],
    device: torch.device,
) -> torch.Tensor | None:
    """The newest row's [*shape, keep] indices among `t` tokens: the sinks, then `best(start, stop, count)`
    (ascending indices of the best `count` tokens in [start, stop)), then the recent window, which holds
    the current token; None when protection alone exceeds `keep`. The sinks come first and the recent
    window last in cache order, so the chosen tokens between them need no sort after their own."""
    first_recent = max(0, t - max(policy.recent, 1))
    sinks = min(policy.sinks, first_recent)
    rest = keep - sinks - (t - first_recent)
    if rest < 0:
        return None
    parts = [torch.arange(sinks, device=device).expand(*shape, -1)]
    if rest > 0:
        parts.append(best(sinks, first_recent, rest))
    parts.append(torch.arange(first_recent, t, device=device).expand(*shape, -1))
    return torch.cat(parts, dim=-1)


def static_indices(
    policy: Policy, state: Any, view: LayerView, keep: torch.Tensor, rows: int, fused: bool = True
) -> torch.Tensor:
    """The static decode step's choice, in tensor ops only: [B, Hkv, rows] indices into the fixed-capacity
    cache `view.key` for the one query row at the device-side position `view.positions` ([1]).

    The layout of `choose_newest` with fixed widths: the sinks, then `rows - sinks - recent` slots for the best
    `keep - sinks - recent` other tokens (ascending, -1 padding after them), then the recent window, which
    holds the current token; the caller guarantees `keep >= sinks + recent`, so protection always fits. A
    method scoring stored codes picks by the fused selection (`fused`) or by its plain-torch scores."""
    b, hkv = view.key.shape[:2]
    recent = max(policy.recent, 1)
    length = view.positions + 1
    first_recent = length - recent
    width, count = rows - policy.sinks - recent, keep - policy.sinks - recent
    query = policy.static_codes(state, view)
    if query is None:
        best = topk_padded(policy.static_scores(state, view), policy.sinks, first_recent, count, width)
    elif fused:
        best = query.select(count, policy.sinks, first_recent, length, width).view(b, hkv, width)
    else:
        best = topk_padded(query.scores(length), policy.sinks, first_recent, count, width).view(b, hkv, width)
    device = view.key.device
    sinks = torch.arange(policy.sinks, device=device).expand(b, hkv, -1)
    window = (first_recent + torch.arange(recent, device=device)).expand(b, hkv, -1)
    return torch.cat([sinks, best, window], dim=-1)


def prefill_state(policy: Policy, view: LayerView, budget: Budget) -> Any:
    """A recurrence's state after the dense prefill `view` (None for a scorer, which keeps none)."""
    return None if policy.stateless else policy.prefill(view, budget.keep(view.context))


def mask_indices(kept: torch.Tensor) -> torch.Tensor:
    """[B, Hkv, T] bool with the same count per head -> [B, Hkv, K] ascending indices."""
    return ascending_positions(kept, int(kept[0, 0].sum()))


def decode_selection(policy: Policy, state: Any, view: LayerView, keep: int, want_scores: bool = False) -> Selection:
    """One decode step (one query row, the newest token): the rows to read and, for a scorer, its scores
    (always when `want_scores`, for a trace; a scorer's batched `decode_indices` may skip them otherwise)."""
    if not policy.stateless:
        return Selection(mask_indices(policy.step(state, view, keep)), None)
    if not want_scores:
        fast = policy.decode_indices(view, keep)
        if fast is not None:
            return Selection(fast, None)
    head = policy.scores(view)
    indices = newest_rows(policy, pool_group(head.float(), view.group, policy.pool)[:, :, -1, :], keep)
    if indices is None:
        ranks = scorer_ranks(policy, view)[1][:, :, -1, :]
        indices = mask_indices(ranks < keep)
    return Selection(indices, head[:, :, -1, :])


def _step_rows(policy: Policy, state: Any, view: LayerView, budget: Budget, masks: torch.Tensor, first: int) -> None:
    """Rows `first`.. of `view`, each one `step` of the recurrence (as in decoding), written into `masks`."""
    view.true_logits()  # once for all the rows: every row's view slices it
    for row in range(first, view.positions.numel()):
        position = int(view.positions[row])
        kept = policy.step(state, view.rows(slice(row, row + 1), position + 1), budget.keep(position + 1))
        masks[:, :, row, : position + 1] = kept


def replay(policy: Policy, view: LayerView, budget: Budget, prompt_len: int, state: Any = None) -> torch.Tensor:
    """A recurrence over a pass: [B, Hkv, Q, T] keep mask.

    Over a whole sequence (rows = positions 0..T-1), rows before `prompt_len` are the dense prefill
    and each later row is one `step`. A pass after a prefill run elsewhere (rows from position P > 0)
    continues from that prefill's `state`, every row a step.
    """
    b, hkv = view.key.shape[:2]
    masks = view.causal()[None, None].expand(b, hkv, -1, -1).clone()
    if int(view.positions[0]) > 0:
        if state is None:
            raise ValueError("A pass after a prefill needs the recurrence's prefill state (observe_prefill).")
        _step_rows(policy, state, view, budget, masks, 0)
        return masks
    if view.positions.numel() != view.context:
        raise ValueError("replay needs a view over every row of the sequence, from position 0.")
    prompt = min(prompt_len, view.context)
    state = policy.prefill(view.rows(slice(0, prompt), prompt), budget.keep(prompt))
    _step_rows(policy, state, view, budget, masks, prompt)
    return masks


def teacher_mask(policy: Policy, view: LayerView, budget: Budget, prompt_len: int, state: Any = None) -> torch.Tensor:
    """Teacher forcing: [B, Hkv, Q, T] keep mask, prompt rows dense (`state`: a recurrence's prefill state
    when the pass follows a prefill run elsewhere)."""
    if not policy.stateless:
        return replay(policy, view, budget, prompt_len, state)
    keeps = budget.row_keeps(view.positions, prompt_len)
    return scorer_ranks(policy, view)[1] < keeps[:, None]
