"""SnapKV: compress the prompt once, using the attention of its last `window` queries.

Prompt tokens are scored by the attention the observation window pays them (group mean), smoothed
by a max-pool of width `kernel`, and the best ones are kept together with the window itself. The
prompt is compressed to the budget at its end; tokens generated afterwards are all kept (SnapKV
compresses prefill only), so its achieved sparsity falls as generation goes on and is reported so.

The window takes at most half of the budget: the paper's budgets (1k-4k) dwarf its 32-token window,
and a window that filled a small budget would leave no room for the selection (and drop the sink).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.policies.base import LayerView, Policy, pool_group


def compress_prompt(probs_window: torch.Tensor, keep: int, group: int, kernel: int) -> torch.Tensor:
    """[B, Hq, w, P] window attention -> [B, Hkv, P] bool: the window plus the best pooled tokens."""
    b, _, w, p = probs_window.shape
    hkv = probs_window.shape[1] // group
    kept = torch.zeros(b, hkv, p, dtype=torch.bool, device=probs_window.device)
    if keep >= p:
        return kept.fill_(True)
    window = min(w, max(1, keep // 2))
    kept[..., p - window :] = True
    rest = keep - window
    if rest > 0:
        votes = pool_group(probs_window[..., : p - window], group, "mean").sum(dim=2)
        pooled = torch.nn.functional.max_pool1d(votes.view(b * hkv, 1, -1), kernel, stride=1, padding=kernel // 2)
        best = pooled.view(b, hkv, -1).topk(rest, dim=-1).indices
        kept.scatter_(-1, best, True)
    return kept


@dataclass(eq=False)
class SnapKVPolicy(Policy):
    name = "snapkv"
    description = "Prompt compressed once by its last 32 queries' pooled attention (SnapKV); generated tokens kept."

    sinks: int = field(default=0, init=False)  # SnapKV keeps its observation window, not sinks
    recent: int = field(default=0, init=False)
    window: int = 32
    kernel: int = 7

    def prefill(self, view: LayerView, keep: int) -> torch.Tensor:
        """[B, Hkv, P] the prompt tokens kept for the rest of the sequence."""
        w = min(self.window, view.context)
        return compress_prompt(view.true_probs()[:, :, view.context - w :], keep, view.group, self.kernel)

    def step(self, state: torch.Tensor, view: LayerView, keep: int) -> torch.Tensor:
        generated = state.new_ones(*state.shape[:2], view.context - state.shape[-1])
        return torch.cat([state, generated], dim=-1)
