"""H2O: heavy hitters by attention accumulated over all past queries, plus a recent window.

Half the budget goes to the most recent tokens, the rest to the tokens with the largest accumulated
attention. Eviction is permanent: an evicted token is never read again, whatever a later query
needs (this is what the co-reference task probes).
"""

from __future__ import annotations

import torch

from core.policies.base import LayerView, Policy, pool_group


class H2OPolicy(Policy):
    name = "h2o"
    description = "Heavy hitters (accumulated attention) + recent window; permanent eviction (H2O)."
    stateless = False

    def __init__(self, sinks: int = 0, recent: int = 0, seed: int = 0, recent_share: float = 0.5) -> None:
        super().__init__(sinks=sinks, recent=recent, seed=seed)
        self.recent_share = recent_share
        self.acc: dict[int, torch.Tensor] = {}
        self.alive: dict[int, torch.Tensor] = {}

    def begin(self, num_layers, budget, prompt_len) -> None:
        super().begin(num_layers, budget, prompt_len)
        self.acc, self.alive = {}, {}

    def _grow(self, layer: int, view: LayerView, upto: int) -> None:
        """Admit tokens [current length, upto) into the cache state with no attention yet."""
        b, hkv = view.key.shape[:2]
        acc = self.acc.get(layer, view.key.new_zeros(b, hkv, 0, dtype=torch.float32))
        alive = self.alive.get(layer, torch.zeros(b, hkv, 0, dtype=torch.bool, device=view.key.device))
        extra = upto - acc.shape[-1]
        if extra > 0:
            acc = torch.cat([acc, acc.new_zeros(b, hkv, extra)], dim=-1)
            alive = torch.cat([alive, alive.new_ones(b, hkv, extra)], dim=-1)
        self.acc[layer], self.alive[layer] = acc, alive

    def _evict(self, layer: int, keep: int, position: int) -> None:
        """Evict the lightest non-recent tokens until `keep` remain (same count for every head)."""
        alive = self.alive[layer]
        excess = int(alive[0, 0].sum()) - keep
        if excess <= 0:
            return
        recent_n = max(1, int(keep * self.recent_share))
        cols = torch.arange(alive.shape[-1], device=alive.device)
        candidate = alive & (cols <= position - recent_n)
        weight = self.acc[layer].masked_fill(~candidate, torch.inf)
        victims = weight.topk(excess, dim=-1, largest=False).indices
        self.alive[layer] = alive.scatter(-1, victims, False)

    def _accumulate(self, layer: int, logits_row: torch.Tensor, group: int) -> None:
        """Add the attention this row paid over the tokens it read to the running totals."""
        alive = self.alive[layer]
        t = alive.shape[-1]
        mask = alive.repeat_interleave(group, dim=1)
        probs = torch.softmax(logits_row[..., :t].masked_fill(~mask, float("-inf")), dim=-1)
        self.acc[layer] += pool_group(probs[:, :, None, :], group, "mean")[:, :, 0, :]

    def observe_prefill(self, view: LayerView) -> None:
        self._grow(view.layer, view, view.context)
        probs = view.true_probs()
        self.acc[view.layer] += pool_group(probs, view.group, "mean").sum(dim=2)

    def select(self, view: LayerView, keep: int) -> torch.Tensor:
        layer = view.layer
        self._grow(layer, view, view.context)
        self._evict(layer, keep, view.context - 1)
        alive = self.alive[layer]
        kept = int(alive[0, 0].sum())
        return alive.float().topk(kept, dim=-1).indices.sort(dim=-1).values

    def observe_step(self, view: LayerView, indices: torch.Tensor) -> None:
        self._accumulate(view.layer, view.true_logits()[:, :, -1, :], view.group)

    def select_rows(self, view: LayerView, keeps: torch.Tensor) -> torch.Tensor:
        """Replay decoding row by row: rows before the prompt end are dense, later rows evict."""
        layer, group, t = view.layer, view.group, view.context
        logits = view.true_logits()
        causal = view.causal()
        b, hkv = view.key.shape[:2]
        masks = causal[None, None].expand(b, hkv, -1, -1).clone()
        prompt = int(min(self.prompt_len, t))
        self.acc.pop(layer, None)
        self.alive.pop(layer, None)
        self._grow(layer, view, prompt)
        if prompt:
            self.acc[layer] += pool_group(torch.softmax(logits[:, :, :prompt, :prompt], dim=-1), group, "mean").sum(2)
        for row in range(prompt, t):
            self._grow(layer, view, row + 1)
            self._evict(layer, int(keeps[row]), row)
            masks[:, :, row, : row + 1] = self.alive[layer]
            masks[:, :, row, row + 1 :] = False
            self._accumulate(layer, logits[:, :, row, :], group)
        return masks
