"""StreamingLLM: the first `sinks` tokens plus the most recent ones, whatever the query."""

from dataclasses import dataclass

import torch

from core.policies.base import LayerView, Policy


@dataclass(eq=False)
class StreamingPolicy(Policy):
    name = "streaming"
    description = "Attention sinks + recent window (StreamingLLM); ignores the query."

    sinks: int = 4

    def scores(self, view: LayerView) -> torch.Tensor:
        b, hq, q, t = view.query.shape[0], view.query.shape[1], view.query.shape[2], view.context
        return torch.arange(t, device=view.key.device, dtype=torch.float32).expand(b, hq, q, t)
