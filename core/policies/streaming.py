"""StreamingLLM: the first `sinks` tokens plus the most recent ones, whatever the query."""

import torch

from core.policies.base import LayerView, Policy


class StreamingPolicy(Policy):
    name = "streaming"
    description = "Attention sinks + recent window (StreamingLLM); ignores the query."

    def __init__(self, sinks: int = 4, recent: int = 0, seed: int = 0) -> None:
        super().__init__(sinks=sinks, recent=recent, seed=seed)

    def head_scores(self, view: LayerView) -> torch.Tensor:
        b, hq, q, t = view.query.shape[0], view.query.shape[1], view.query.shape[2], view.context
        return torch.arange(t, device=view.key.device, dtype=torch.float32).expand(b, hq, q, t)
