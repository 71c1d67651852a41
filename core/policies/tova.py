"""TOVA (Oren et al. 2024, "Transformers are Multi-State RNNs"): evict the token the newest query attends to least.

The cache is a fixed-size state. After each step the tokens with the lowest attention of that step's
query, averaged over all the layer's heads (the paper's best variant, as kvpress's TOVAPress), leave
the cache for good; the token being decoded is always read. After a dense prefill the prompt's last
row ranks the prompt the same way. No sinks or recent window: the paper defines none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.policies.base import LayerView, Policy


@dataclass
class TovaState:
    """One layer's state: which tokens are still cached and the last query's head-averaged attention to them."""

    alive: torch.Tensor  # [B, Hkv, T] bool, the same row for every KV head (one choice per layer)
    last: torch.Tensor  # [B, T] fp32

    def grow(self, upto: int) -> None:
        """Admit tokens [current length, upto): cached, not yet attended to."""
        extra = upto - self.alive.shape[-1]
        if extra > 0:
            self.alive = torch.cat([self.alive, self.alive.new_ones(*self.alive.shape[:2], extra)], dim=-1)
            self.last = torch.cat([self.last, self.last.new_zeros(self.last.shape[0], extra)], dim=-1)


def head_mean_attention(view: LayerView, alive: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] the newest row's attention over the cached tokens (`alive`), averaged over every query head."""
    logits = view.true_logits()[:, :, -1, :]
    if alive is not None:
        logits = logits.masked_fill(~alive.repeat_interleave(view.group, dim=1), float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=1)


@dataclass(eq=False)
class TovaPolicy(Policy):
    name = "tova"
    description = "Evict the token the newest query attends to least, averaged over heads; permanent (TOVA)."

    sinks: int = field(default=0, init=False)  # TOVA protects nothing but the token being decoded
    recent: int = field(default=0, init=False)

    def side_reads(self, past: torch.Tensor, kept: torch.Tensor, head_dim: int) -> float:
        """The last query's attention to every cached token: one value each, shared by the layer's KV heads."""
        return float(kept.sum()) / (2 * head_dim * kept.shape[1])  # kept: [B, Hkv, rows]

    def prefill(self, view: LayerView, keep: int) -> TovaState:
        b, hkv, t = *view.key.shape[:2], view.context
        alive = torch.ones(b, hkv, t, dtype=torch.bool, device=view.key.device)
        last = head_mean_attention(view.rows(slice(-1, None))) if t else view.key.new_zeros(b, 0, dtype=torch.float32)
        return TovaState(alive, last.float())

    def step(self, state: TovaState, view: LayerView, keep: int) -> torch.Tensor:
        """Admit the new token, evict the least attended others down to `keep`, then record this row's attention."""
        position = view.context - 1
        state.grow(view.context)
        excess = int(state.alive[0, 0].sum()) - keep
        if excess > 0:
            candidate = state.alive[:, 0, :].clone()
            candidate[:, position] = False
            victims = state.last.masked_fill(~candidate, torch.inf).topk(excess, dim=-1, largest=False).indices
            state.alive = state.alive.scatter(-1, victims[:, None, :].expand(-1, state.alive.shape[1], -1), False)
        state.last = head_mean_attention(view, state.alive)
        return state.alive
