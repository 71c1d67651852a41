"""Random selection with the same budget: the floor every method must beat.

Scores come from an integer hash of (seed, layer, query position, head, token) so that a row gets
the same draw in decode and teacher-forced mode, with no generator state to carry.
"""

from dataclasses import dataclass

import torch

from core.policies.base import LayerView, Policy

_MASK = (1 << 31) - 1


def hashed_uniform(*coords: torch.Tensor) -> torch.Tensor:
    """Deterministic pseudo-random values in [0, 1) from broadcastable integer coordinates."""
    h = torch.zeros((), dtype=torch.int64)
    for c in coords:
        h = (h * 1000003 + c.to(torch.int64)) & _MASK
        h = (h ^ (h >> 13)) * 1274126177 & _MASK
        h = h ^ (h >> 16)
    return (h & 0xFFFFFF).float() / float(1 << 24)


@dataclass(eq=False)
class RandomPolicy(Policy):
    name = "random"
    description = "Uniformly random past tokens per KV head (seeded floor)."

    seed: int = 0

    def scores(self, view: LayerView) -> torch.Tensor:
        """One draw per KV head (every query head of a group shares it), hashed once per KV head."""
        b, hq, q, _ = view.query.shape
        heads = torch.arange(hq // view.group)[:, None, None]
        rows = view.positions.cpu()[None, :, None]
        cols = torch.arange(view.context)[None, None, :]
        draw = hashed_uniform(torch.tensor(self.seed), torch.tensor(view.layer), rows, heads, cols)
        return draw.to(view.key.device).repeat_interleave(view.group, dim=0).expand(b, hq, q, view.context)
