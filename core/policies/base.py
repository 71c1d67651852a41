"""The one interface every selection method implements.

Selection is per KV head: under GQA all query heads of a group read the same K/V rows, so choosing
per query head would read up to `group` times more rows and save no bandwidth. Policies score past
tokens per query head (what the page draws) and `pool` them over the group (max by default: a row
needed by any head of the group is kept).

A policy is a dataclass whose fields are its options, and it is one of two kinds:
- a scorer (stateless) implements `scores`: importance of every past token to every query row;
- a recurrence (stateful) implements `prefill` (state from the dense prefill) and `step` (one decode
  step's choice and state update), written once: `core.policies.driver` replays it for teacher forcing.
Which kind a policy is follows from what it implements (`stateless`), never from a flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from core.spec import FIRST_SPARSE_LAYER

if TYPE_CHECKING:
    from core.kernels.select_cpu import CodeQuery

SINKS = 4  # the one protection rule of every scorer: the first tokens ...
RECENT = 4  # ... and the newest ones, counted in the budget (docs/methods.md)


@dataclass
class LayerView:
    """What a policy sees at one layer: post-RoPE queries for some rows and the key cache they read.

    `logits` / `probs` hold the true attention once computed (`true_logits`, `true_probs`), so that the
    restricted views a driver or a metric cuts from this one reuse it instead of recomputing it.
    """

    layer: int
    query: torch.Tensor  # [B, Hq, Q, D]
    key: torch.Tensor  # [B, Hkv, T, D]
    scale: float
    positions: torch.Tensor  # [Q] absolute position of each query row; row q reads keys <= positions[q]
    logits: torch.Tensor | None = field(default=None, repr=False)  # [B, Hq, Q, T] once computed
    probs: torch.Tensor | None = field(default=None, repr=False)  # [B, Hq, Q, T] once computed

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
        if self.logits is None:  # each GQA group's query rows in one matmul: K is never copied per head
            b, hq, q, d = self.query.shape
            hkv = self.key.shape[1]
            grouped = self.query.float().reshape(b, hkv, (hq // hkv) * q, d)
            logits = (torch.matmul(grouped, self.key.float().transpose(-1, -2)) * self.scale).view(b, hq, q, -1)
            self.logits = logits.masked_fill(~self.causal(), float("-inf"))
        return self.logits

    def true_probs(self) -> torch.Tensor:
        """[B, Hq, Q, T] the dense attention each query would pay."""
        if self.probs is None:
            self.probs = torch.softmax(self.true_logits(), dim=-1)
        return self.probs

    def rows(self, index: torch.Tensor | slice, context: int | None = None) -> LayerView:
        """The same layer seen from some query rows (and the first `context` keys); cached attention is sliced."""
        context = self.context if context is None else context

        def cut(table: torch.Tensor | None) -> torch.Tensor | None:
            return None if table is None else table[:, :, index, :context]

        return LayerView(self.layer, self.query[:, :, index], self.key[:, :, :context], self.scale,
                         self.positions[index], cut(self.logits), cut(self.probs))


def pool_group(scores: torch.Tensor, group: int, how: str = "max") -> torch.Tensor:
    """[B, Hq, Q, T] -> [B, Hkv, Q, T] by max or mean over each GQA group of consecutive heads."""
    b, hq, q, t = scores.shape
    grouped = scores.view(b, hq // group, group, q, t)
    return grouped.amax(dim=2) if how == "max" else grouped.mean(dim=2)


def topk_sorted(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` best scores along the last dim, ascending (cache order).

    Ties go to the earlier token, exactly as in `descending_ranks`, so decoding and teacher forcing
    agree even for page-constant scores (Quest). The fast path finds each row's cut with an unsorted
    top-k and reads the tokens at or above it in cache order (no sort), unless a tie straddles the
    cut; the stable full sort settles that case."""
    cut = scores.topk(keep, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    chosen = scores >= cut
    if bool((chosen.sum(-1) == keep).all()):
        return ascending_positions(chosen, keep)
    return scores.argsort(dim=-1, descending=True, stable=True)[..., :keep].sort(dim=-1).values


def topk_padded(scores: torch.Tensor, start: int, stop: torch.Tensor, count: torch.Tensor, width: int) -> torch.Tensor:
    """[..., C] scores -> [..., width]: the best `count` tokens in [start, stop), ascending, then -1 padding,
    in tensor ops only (`stop`, `count` device tensors, `count` <= width <= C: the static decode step).

    The same choice as `topk_sorted` (ties to the earlier token): the cut is the count-th best value, every
    token above it is kept and the earliest of those at it fill the rest; a second top-k over the kept
    tokens' reversed positions puts them in cache order."""
    cols = torch.arange(scores.shape[-1], device=scores.device)
    candidate = (cols >= start) & (cols < stop)
    masked = scores.masked_fill(~candidate, float("-inf"))
    best = masked.topk(width, dim=-1).values  # descending
    cut = best.gather(-1, (count - 1).clamp(min=0).expand(*best.shape[:-1], 1))
    above = masked > cut
    at = (masked == cut) & candidate
    wanted = count - above.sum(-1, keepdim=True)
    chosen = (above | (at & (at.cumsum(-1) <= wanted))) & (count > 0)
    order = torch.where(chosen, scores.shape[-1] - cols, 0).topk(width, dim=-1).values
    return torch.where(order > 0, scores.shape[-1] - order, -1)


def ascending_positions(chosen: torch.Tensor, count: int) -> torch.Tensor:
    """[..., T] bool with `count` True per row -> [..., count] their positions, ascending (numpy's
    flat nonzero on CPU: ~5x torch's there)."""
    if chosen.device.type == "cpu":
        flat = torch.from_numpy(np.flatnonzero(chosen.numpy()))
    else:
        flat = chosen.flatten().nonzero().squeeze(-1)
    return flat.view(*chosen.shape[:-1], count) % chosen.shape[-1]


def descending_ranks(values: torch.Tensor) -> torch.Tensor:
    """[..., T] rank of each entry in its row (0 = largest; ties go to the earlier token).

    Ranking once and comparing with many budgets' counts is what keeps the budget sweeps cheap.
    """
    order = values.argsort(dim=-1, descending=True, stable=True)
    places = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, places)


@dataclass(eq=False)
class Policy:
    """A token-selection method: set `name`, then implement `scores` (scorer) or `prefill` + `step` (recurrence).

    `sinks` and `recent` are the protected tokens of a scorer (the first tokens and the newest ones,
    counted in the budget), the same for every scorer unless its paper defines its own; the current
    token is always read.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    pool: ClassVar[str] = "max"
    first_sparse_layer: ClassVar[int] = FIRST_SPARSE_LAYER

    sinks: int = SINKS
    recent: int = RECENT

    def options(self) -> dict[str, Any]:
        """The policy's options (its dataclass fields): what identifies it beside its name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    @classmethod
    def available(cls) -> bool:
        """Whether the method can be built here with its defaults (a learned one needs its shipped weights)."""
        return True

    @property
    def is_dense(self) -> bool:
        return False

    @property
    def stateless(self) -> bool:
        """A scorer (no recurrence): derived from whether the policy implements `step`."""
        return type(self).step is Policy.step

    def is_sparse_layer(self, layer: int) -> bool:
        return not self.is_dense and layer >= self.first_sparse_layer

    def reset(self) -> None:
        """Start a new sequence: forget any per-sequence cache (a recurrence's state lives with its caller)."""

    def attach(self, model: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        """Register the forward hooks a policy needs (a predictor reading hidden states); none by default."""
        return []

    def side_reads(self, past: torch.Tensor, kept: torch.Tensor, head_dim: int) -> float:
        """Memory a step reads beyond the K/V rows it gathers (a side cache, page bounds, all of K), in
        K/V-row equivalents (2 * head_dim values) per KV head, summed over rows of `past` (tokens each
        row may read) and `kept` (rows it reads). Zero by default: the method reads only its rows."""
        return 0.0

    def scores(self, view: LayerView) -> torch.Tensor:
        """Scorer: [B, Hq, Q, T] importance of each past token to each query row and head (higher = keep)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither scores nor prefill/step")

    def decode_indices(self, view: LayerView, keep: int) -> torch.Tensor | None:
        """Scorer, optional: a decode step's [B, Hkv, keep] rows by a faster route that must choose what
        `scores` would (TokenButler batches a producer group); None means use `scores`."""
        return None

    def static_prefill(self, view: LayerView, capacity: int) -> Any:
        """Static decode step: the buffers this layer's selection reads (a summary of every cached key), filled
        from the dense prefill `view` with room for `capacity` tokens; None (the default) when it keeps none."""
        return None

    def static_codes(self, state: Any, view: LayerView) -> CodeQuery | None:
        """Static decode step of a method scoring stored key codes: the codes (the step's new key written in at
        the device-side `view.positions`) and the queries meeting them, for one fused selection; None (the
        default): the step ranks `static_scores`."""
        return None

    def static_scores(self, state: Any, view: LayerView) -> torch.Tensor:
        """Static decode step: [B, Hkv, C] pooled scores of every row of the fixed-capacity cache `view.key` for
        its one query row, in tensor ops only (rows past `view.positions` are never candidates). By default
        the pooled `scores`, which a scorer computing them from `view` alone gives without a host sync."""
        return pool_group(self.scores(view).float(), view.group, self.pool)[:, :, -1, :]

    def prefill(self, view: LayerView, keep: int) -> Any:
        """Recurrence: the state after the dense prefill `view` (all prompt rows), `keep` tokens to keep after it."""
        raise NotImplementedError(f"{type(self).__name__} is a scorer: it has no recurrence")

    def step(self, state: Any, view: LayerView, keep: int) -> torch.Tensor:
        """Recurrence: one decode step (one query row, the newest token): [B, Hkv, T] bool kept rows,
        the same number for every head; `state` is updated in place."""
        raise NotImplementedError(f"{type(self).__name__} is a scorer: it has no recurrence")

