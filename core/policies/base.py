"""The one interface every selection method implements.

Selection is per KV head: under GQA all query heads of a group read the same K/V rows, so choosing
per query head would read up to `group` times more rows and save no bandwidth. Policies score past
tokens per query head (what the page draws) and `pool` them over the group (max by default: a row
needed by any head of the group is kept).

Two execution modes share each policy:
- decode: dense prefill (`observe_prefill`), then one query per step (`select` -> indices to gather);
- teacher: one pass over a whole sequence (`select_rows` -> a keep mask per row).
A stateless policy implements only `head_scores`; both modes then agree by construction.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from core.budget import Budget

CURRENT_TIER = 1e30
SINK_TIER = 1e29
RECENT_TIER = 1e28


@dataclass
class LayerView:
    """What a policy sees at one layer: post-RoPE queries for some rows and the whole key cache."""

    layer: int
    query: torch.Tensor  # [B, Hq, Q, D]
    key: torch.Tensor  # [B, Hkv, T, D]
    scale: float
    positions: torch.Tensor  # [Q] absolute position of each query row; row q reads keys <= positions[q]
    extras: dict = field(default_factory=dict)

    @property
    def group(self) -> int:
        return self.query.shape[1] // self.key.shape[1]

    @property
    def context(self) -> int:
        return self.key.shape[2]

    def causal(self) -> torch.Tensor:
        """[Q, T] True where row q may read key t."""
        cols = torch.arange(self.context, device=self.key.device)
        return cols[None, :] <= self.positions[:, None]

    def true_logits(self) -> torch.Tensor:
        """[B, Hq, Q, T] fp32 pre-softmax scores of the real queries, -inf beyond each row's past."""
        if "logits" not in self.extras:
            key = self.key.repeat_interleave(self.group, dim=1)
            logits = torch.matmul(self.query.float(), key.float().transpose(-1, -2)) * self.scale
            self.extras["logits"] = logits.masked_fill(~self.causal(), float("-inf"))
        return self.extras["logits"]

    def true_probs(self) -> torch.Tensor:
        """[B, Hq, Q, T] the dense attention each query would pay."""
        if "probs" not in self.extras:
            self.extras["probs"] = torch.softmax(self.true_logits(), dim=-1)
        return self.extras["probs"]


def pool_group(scores: torch.Tensor, group: int, how: str = "max") -> torch.Tensor:
    """[B, Hq, Q, T] -> [B, Hkv, Q, T] by max or mean over each GQA group of consecutive heads."""
    b, hq, q, t = scores.shape
    grouped = scores.view(b, hq // group, group, q, t)
    return grouped.amax(dim=2) if how == "max" else grouped.mean(dim=2)


def topk_sorted(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` best scores along the last dim, ascending (cache order).

    Ties go to the earlier token, exactly as in `rank_mask`, so decoding and teacher forcing agree
    even for page-constant scores (Quest). The fast top-k is used unless a tie straddles the cut."""
    top = scores.topk(keep, dim=-1)
    cut = top.values[..., -1:]
    if bool(((scores == cut).sum(-1) == (top.values == cut).sum(-1)).all()):
        return top.indices.sort(dim=-1).values
    return scores.argsort(dim=-1, descending=True, stable=True)[..., :keep].sort(dim=-1).values


def descending_ranks(values: torch.Tensor) -> torch.Tensor:
    """[..., T] rank of each entry in its row (0 = largest; ties go to the earlier token).

    Ranking once and comparing with many budgets' counts is what keeps the budget sweeps cheap.
    """
    order = values.argsort(dim=-1, descending=True, stable=True)
    places = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, places)


def rank_mask(scores: torch.Tensor, keeps: torch.Tensor) -> torch.Tensor:
    """[..., Q, T] bool: True for the keeps[q] best entries of each row."""
    return descending_ranks(scores) < keeps.to(scores.device)[:, None]


class Policy(ABC):
    """A token-selection method. Subclasses set `name` and override `head_scores` (stateless) or the hooks."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    stateless: ClassVar[bool] = True
    pool: ClassVar[str] = "max"
    first_sparse_layer: ClassVar[int] = 1

    def __init__(self, sinks: int = 0, recent: int = 0, seed: int = 0) -> None:
        self.sinks = sinks
        self.recent = recent
        self.seed = seed
        self.budget = Budget.dense()
        self.prompt_len = 0

    @classmethod
    def available(cls) -> bool:
        """Whether the method can be built here with its defaults (a learned one needs its shipped weights)."""
        return True

    @property
    def is_dense(self) -> bool:
        return False

    def is_sparse_layer(self, layer: int) -> bool:
        return not self.is_dense and layer >= self.first_sparse_layer

    def begin(self, num_layers: int, budget: Budget, prompt_len: int) -> None:
        """Start a new sequence: forget all per-sequence state."""
        self.budget = budget
        self.prompt_len = prompt_len

    def attach(self, model: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        """Register the forward hooks a policy needs (a predictor reading hidden states); none by default."""
        return []

    def head_scores(self, view: LayerView) -> torch.Tensor:
        """[B, Hq, Q, T] importance of each past token to each query head (higher = keep)."""
        raise NotImplementedError(f"{type(self).__name__} must implement head_scores or override select/select_rows")

    def kv_scores(self, view: LayerView) -> torch.Tensor:
        """[B, Hkv, Q, T]: pooled head scores with protected tokens lifted and the future excluded."""
        scores = self.head_scores(view)
        view.extras["head_scores"] = scores
        pooled = pool_group(scores.float(), view.group, self.pool)
        return self.protect(pooled, view)

    def protect(self, scores: torch.Tensor, view: LayerView) -> torch.Tensor:
        """Lift the current token, then sinks, then recent tokens above any score; mask the future."""
        if scores.shape[-2] == 1 and int(view.positions[-1]) == view.context - 1:
            return self._protect_last_row(scores)
        cols = torch.arange(view.context, device=scores.device)[None, :]
        pos = view.positions[:, None]
        lifted = scores.clone()
        if self.recent:
            recent = (pos - cols < self.recent) & (cols <= pos)
            lifted = torch.where(recent, RECENT_TIER + cols.float(), lifted)
        if self.sinks:
            lifted = torch.where(cols < self.sinks, torch.full_like(lifted, SINK_TIER), lifted)
        lifted = torch.where(cols == pos, torch.full_like(lifted, CURRENT_TIER), lifted)
        return lifted.masked_fill(~view.causal(), float("-inf"))

    def _protect_last_row(self, scores: torch.Tensor) -> torch.Tensor:
        """`protect` for a decode step (one query, the newest token, no future): slices instead of masks."""
        lifted = scores.clone()
        t = scores.shape[-1]
        if self.recent:
            first = max(0, t - self.recent)
            lifted[..., first:] = RECENT_TIER + torch.arange(first, t, device=scores.device, dtype=scores.dtype)
        if self.sinks:
            lifted[..., : self.sinks] = SINK_TIER
        lifted[..., -1] = CURRENT_TIER
        return lifted

    def observe_prefill(self, view: LayerView) -> None:
        """See the dense prefill of a layer (stateful policies build their state here)."""

    def select(self, view: LayerView, keep: int) -> torch.Tensor:
        """Decode step (one query row): [B, Hkv, keep] token indices, ascending."""
        return topk_sorted(self.kv_scores(view)[:, :, -1, :], keep)

    def observe_step(self, view: LayerView, indices: torch.Tensor) -> None:
        """See which rows a decode step read (H2O accumulates attention here)."""

    def select_rows(self, view: LayerView, keeps: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: [B, Hkv, Q, T] bool keep mask, row q keeping keeps[q] tokens."""
        return rank_mask(self.kv_scores(view), keeps)
