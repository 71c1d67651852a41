"""SnapKV: compress the prompt once, using the attention of its last `window` queries.

Prompt tokens are scored by the attention the observation window pays them (group mean), smoothed
by a max-pool of width `kernel`, and the best ones are kept together with the window itself. The
prompt is compressed to the budget at its end; tokens generated afterwards are all kept (SnapKV
compresses prefill only), so its achieved sparsity falls as generation goes on and is reported so.
"""

from __future__ import annotations

import torch

from core.policies.base import LayerView, Policy, pool_group


def compress_prompt(probs_window: torch.Tensor, keep: int, group: int, kernel: int) -> torch.Tensor:
    """[B, Hq, w, P] window attention -> [B, Hkv, P] bool: the window plus the best pooled tokens."""
    b, _, w, p = probs_window.shape
    hkv = probs_window.shape[1] // group
    kept = torch.zeros(b, hkv, p, dtype=torch.bool, device=probs_window.device)
    if keep >= p:
        return kept.fill_(True)
    window = min(w, keep)
    kept[..., p - window :] = True
    rest = keep - window
    if rest > 0:
        votes = pool_group(probs_window[..., : p - w], group, "mean").sum(dim=2)
        pooled = torch.nn.functional.max_pool1d(votes.view(b * hkv, 1, -1), kernel, stride=1, padding=kernel // 2)
        best = pooled.view(b, hkv, -1).topk(rest, dim=-1).indices
        kept.scatter_(-1, best, True)
    return kept


class SnapKVPolicy(Policy):
    name = "snapkv"
    description = "Prompt compressed once by its last 32 queries' pooled attention (SnapKV); generated tokens kept."
    stateless = False

    def __init__(self, sinks: int = 0, recent: int = 0, seed: int = 0, window: int = 32, kernel: int = 7) -> None:
        super().__init__(sinks=sinks, recent=recent, seed=seed)
        self.window = window
        self.kernel = kernel
        self.kept_prompt: dict[int, torch.Tensor] = {}

    def begin(self, num_layers, budget, prompt_len) -> None:
        super().begin(num_layers, budget, prompt_len)
        self.kept_prompt = {}

    def _compress(self, view: LayerView, prompt: int) -> torch.Tensor:
        w = min(self.window, prompt)
        probs = view.true_probs()
        rows = (view.positions >= prompt - w) & (view.positions < prompt)
        window_probs = probs[:, :, rows, :prompt]
        return compress_prompt(window_probs, self.budget.keep(prompt), view.group, self.kernel)

    def observe_prefill(self, view: LayerView) -> None:
        self.kept_prompt[view.layer] = self._compress(view, view.context)

    def select(self, view: LayerView, keep: int) -> torch.Tensor:
        kept_prompt = self.kept_prompt[view.layer]
        generated = kept_prompt.new_ones(*kept_prompt.shape[:2], view.context - kept_prompt.shape[-1])
        kept = torch.cat([kept_prompt, generated], dim=-1)
        return kept.float().topk(int(kept[0, 0].sum()), dim=-1).indices.sort(dim=-1).values

    def select_rows(self, view: LayerView, keeps: torch.Tensor) -> torch.Tensor:
        b, hkv = view.key.shape[:2]
        masks = view.causal()[None, None].expand(b, hkv, -1, -1).clone()
        prompt = int(min(self.prompt_len, view.context))
        if prompt == 0:
            return masks
        kept_prompt = self._compress(view, prompt)
        late = view.positions >= prompt
        masks[:, :, late, :prompt] = kept_prompt[:, :, None, :]
        return masks
