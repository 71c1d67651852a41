"""Quest: query-aware page selection from per-channel key bounds.

Keys are grouped in pages of `page_size` tokens; each page keeps the per-channel min and max of its
keys. A page's score for query q is the upper bound sum_i max(q_i * min_i, q_i * max_i) on any of its
keys' q.k; the top pages are read. Pages only ever contain keys the row may see (the last, partial
page uses the running bounds up to the current token). The first two layers stay dense (as in Quest).
"""

from dataclasses import dataclass

import torch

from core.policies.base import LayerView, Policy


def page_bounds(query: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """sum_i max(q_i*min_i, q_i*max_i), written as two matmuls: relu(q).max + min(q, 0).min."""
    return torch.matmul(query.clamp(min=0), kmax.transpose(-1, -2)) + torch.matmul(
        query.clamp(max=0), kmin.transpose(-1, -2)
    )


@dataclass(eq=False)
class QuestPolicy(Policy):
    name = "quest"
    description = "Pages of 16 keys scored by a sign-aware upper bound (Quest); first two layers dense."
    first_sparse_layer = 2

    page_size: int = 16

    def scores(self, view: LayerView) -> torch.Tensor:
        key = view.key.float()
        b, hkv, t, d = key.shape
        ps = self.page_size
        pages = -(-t // ps)
        padded = torch.nn.functional.pad(key, (0, 0, 0, pages * ps - t))
        valid = torch.nn.functional.pad(torch.ones(t, dtype=torch.bool, device=key.device), (0, pages * ps - t))
        tiles = padded.view(b, hkv, pages, ps, d)
        tile_valid = valid.view(pages, ps)[None, None, :, :, None]
        run_min = torch.where(tile_valid, tiles, torch.inf).cummin(dim=3).values.view(b, hkv, pages * ps, d)[:, :, :t]
        run_max = torch.where(tile_valid, tiles, -torch.inf).cummax(dim=3).values.view(b, hkv, pages * ps, d)[:, :, :t]
        last = (torch.arange(pages, device=key.device) + 1) * ps - 1
        full_min = run_min[:, :, last.clamp(max=t - 1)]
        full_max = run_max[:, :, last.clamp(max=t - 1)]
        g = view.group
        query = view.query.float()
        full = page_bounds(query, full_min.repeat_interleave(g, 1), full_max.repeat_interleave(g, 1))  # [B,Hq,Q,P]
        pos = view.positions
        part_min = run_min[:, :, pos].repeat_interleave(g, 1)  # [B,Hq,Q,D]
        part_max = run_max[:, :, pos].repeat_interleave(g, 1)
        partial = (query.clamp(min=0) * part_max + query.clamp(max=0) * part_min).sum(-1)  # [B,Hq,Q]
        token_page = torch.arange(t, device=key.device) // ps
        scores = full[..., token_page]  # [B,Hq,Q,T]
        same_page = token_page[None, :] == (pos // ps)[:, None]  # [Q,T]
        return torch.where(same_page, partial[..., None], scores)
