"""KNorm: keep the past tokens whose keys have the lowest L2 norm (Devoto et al. 2024; kvpress's KnormPress).

Keys with a small norm tend to draw the most attention (an attention sink has a tiny key), so the norm
alone ranks tokens with no query at all. A key's norm never changes once written, so as a scorer it
keeps what permanent eviction would keep, except that a ratio budget growing with the context can
readmit a token. The norm is taken per KV head (every query head of a group shares it).
"""

from dataclasses import dataclass

import torch

from core.policies.base import LayerView, Policy


@dataclass(eq=False)
class KNormPolicy(Policy):
    name = "knorm"
    description = "Lowest key L2 norm per KV head (KNorm; query-agnostic)."

    def scores(self, view: LayerView) -> torch.Tensor:
        b, hq, q, _ = view.query.shape
        norms = view.key.float().norm(dim=-1)  # [B, Hkv, T]
        return (-norms).repeat_interleave(view.group, dim=1)[:, :, None, :].expand(b, hq, q, view.context)
