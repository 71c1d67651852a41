"""Oracle: the true attention of the current query in the current layer, top-k per KV head.

It needs the full q.K product, so it saves nothing; it is the ceiling every predictor aims at.
Pooling is the group mean of probabilities: that maximises the attention mass the group keeps.
"""

from dataclasses import dataclass

import torch

from core.policies.base import LayerView, Policy


@dataclass(eq=False)
class OraclePolicy(Policy):
    name = "oracle"
    description = "True attention of the current query (ceiling; needs the full q.K product)."
    pool = "mean"

    def scores(self, view: LayerView) -> torch.Tensor:
        return view.true_probs()

    def side_reads(self, past: torch.Tensor, kept: torch.Tensor, head_dim: int) -> float:
        """The whole of K, to know the true attention: half a K/V row per past token."""
        return 0.5 * float(past.sum())
