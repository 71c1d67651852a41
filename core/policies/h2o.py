"""H2O: heavy hitters by attention accumulated over all past queries, plus a recent window.

Half the budget goes to the most recent tokens, the rest to the tokens with the largest accumulated
attention. Eviction is permanent: an evicted token is never read again, whatever a later query
needs (this is what the co-reference task probes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.policies.base import LayerView, Policy, pool_group


@dataclass
class HeavyHitters:
    """One layer's state: attention accumulated per token and which tokens are still cached, per KV head."""

    acc: torch.Tensor  # [B, Hkv, T] fp32
    alive: torch.Tensor  # [B, Hkv, T] bool

    def grow(self, upto: int) -> None:
        """Admit tokens [current length, upto) with no attention yet."""
        extra = upto - self.acc.shape[-1]
        if extra > 0:
            self.acc = torch.cat([self.acc, self.acc.new_zeros(*self.acc.shape[:2], extra)], dim=-1)
            self.alive = torch.cat([self.alive, self.alive.new_ones(*self.alive.shape[:2], extra)], dim=-1)


@dataclass(eq=False)
class H2OPolicy(Policy):
    name = "h2o"
    description = "Heavy hitters (accumulated attention) + recent window; permanent eviction (H2O)."

    sinks: int = field(default=0, init=False)  # H2O protects only its recent share of the budget
    recent: int = field(default=0, init=False)
    recent_share: float = 0.5

    def side_reads(self, past: torch.Tensor, kept: torch.Tensor, head_dim: int) -> float:
        """The accumulated attention of every cached token: one value each."""
        return float(kept.sum()) / (2 * head_dim)

    def prefill(self, view: LayerView, keep: int) -> HeavyHitters:
        b, hkv, t = *view.key.shape[:2], view.context
        acc = view.key.new_zeros(b, hkv, t, dtype=torch.float32)
        if t:
            acc += pool_group(view.true_probs(), view.group, "mean").sum(dim=2)
        return HeavyHitters(acc, torch.ones(b, hkv, t, dtype=torch.bool, device=view.key.device))

    def step(self, state: HeavyHitters, view: LayerView, keep: int) -> torch.Tensor:
        """Admit the new token, evict the lightest non-recent ones down to `keep`, then add this row's attention."""
        position = view.context - 1
        state.grow(view.context)
        excess = int(state.alive[0, 0].sum()) - keep
        if excess > 0:
            recent_n = max(1, int(keep * self.recent_share))
            cols = torch.arange(view.context, device=view.key.device)
            candidate = state.alive & (cols <= position - recent_n)
            victims = state.acc.masked_fill(~candidate, torch.inf).topk(excess, dim=-1, largest=False).indices
            state.alive = state.alive.scatter(-1, victims, False)
        mask = state.alive.repeat_interleave(view.group, dim=1)
        probs = torch.softmax(view.true_logits()[:, :, -1, :].masked_fill(~mask, float("-inf")), dim=-1)
        state.acc += pool_group(probs[:, :, None, :], view.group, "mean")[:, :, 0, :]
        return state.alive
