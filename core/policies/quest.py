"""Quest: query-aware page selection from per-channel key bounds.

Keys are grouped in pages of `page_size` tokens; each page keeps the per-channel min and max of its
keys. A page's score for query q is the upper bound sum_i max(q_i * min_i, q_i * max_i) on any of its
keys' q.k; the top pages are read. Pages only ever contain keys the row may see (the last, partial
page uses the running bounds up to the current token). The first two layers stay dense (as in Quest).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.policies.base import LayerView, Policy, pool_group


def page_bounds(query: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """[B, Hq, Q, D] queries x [B, Hkv, P, D] page bounds -> [B, Hq, Q, P] upper bounds on q.k.

    sum_i max(q_i*min_i, q_i*max_i), written as two matmuls: relu(q).max + min(q, 0).min. Each GQA
    group's query rows share one matmul against their KV head's bounds (no per-head copy)."""
    b, hq, q, d = query.shape
    hkv = kmin.shape[1]
    grouped = query.reshape(b, hkv, (hq // hkv) * q, d)
    bound = torch.matmul(grouped.clamp(min=0), kmax.transpose(-1, -2)) + torch.matmul(
        grouped.clamp(max=0), kmin.transpose(-1, -2)
    )
    return bound.view(b, hq, q, -1)


@dataclass
class PageCache:
    """One layer's bounds of its complete pages, extended as decoding completes pages."""

    kmin: torch.Tensor  # [B, Hkv, P, D]
    kmax: torch.Tensor

    def extend(self, key: torch.Tensor, pages: int, size: int) -> None:
        done = self.kmin.shape[2]
        if pages > done:
            b, hkv, _, d = key.shape
            tiles = key[:, :, done * size : pages * size].float().reshape(b, hkv, pages - done, size, d)
            self.kmin = torch.cat([self.kmin, tiles.amin(dim=3)], dim=2)
            self.kmax = torch.cat([self.kmax, tiles.amax(dim=3)], dim=2)


@dataclass(eq=False)
class QuestPolicy(Policy):
    name = "quest"
    description = "Pages of 16 keys scored by a sign-aware upper bound (Quest); first two layers dense."
    first_sparse_layer = 2

    page_size: int = 16
    pages: dict[int, PageCache] = field(default_factory=dict, init=False, repr=False)

    def reset(self) -> None:
        self.pages = {}

    def side_reads(self, past: torch.Tensor, kept: torch.Tensor, head_dim: int) -> float:
        """Each page's key min and max (2 * head_dim values, one K/V row) per page of the past."""
        return float(torch.div(past + self.page_size - 1, self.page_size, rounding_mode="floor").sum())

    def scores(self, view: LayerView) -> torch.Tensor:
        t = view.context
        if view.positions.numel() == 1 and int(view.positions[0]) == t - 1:
            return self._decode_scores(view)
        return self._row_scores(view)

    def static_prefill(self, view: LayerView, capacity: int) -> PageCache:
        """Bounds of every page of a `capacity`-token cache (zero past the prompt), the prompt's partial page
        holding its keys' running bounds, as `_decode_scores` would see them."""
        key, ps = view.key.float(), self.page_size
        b, hkv, t, d = key.shape
        pages = -(-t // ps)

        def bounds(fill: float, reduce: Callable[..., torch.Tensor]) -> torch.Tensor:
            """Per page, `reduce` over its keys, the partial page padded with `fill` (what never wins)."""
            padded = torch.nn.functional.pad(key, (0, 0, 0, pages * ps - t), value=fill)
            return reduce(padded.view(b, hkv, pages, ps, d), dim=3)

        cache = PageCache(*(key.new_zeros(b, hkv, -(-capacity // ps), d) for _ in range(2)))
        cache.kmin[:, :, :pages] = bounds(torch.inf, torch.amin)
        cache.kmax[:, :, :pages] = bounds(-torch.inf, torch.amax)
        return cache

    def static_scores(self, state: PageCache, view: LayerView) -> torch.Tensor:
        """The new key joins its page's bounds (a page's first key starts them), then every token of the
        capacity gets its page's bound, pooled over the group."""
        position, ps = view.positions, self.page_size
        page = torch.div(position, ps, rounding_mode="floor")
        new = view.key.index_select(2, position).float()  # [B, Hkv, 1, D]
        fresh = (position % ps == 0).view(1, 1, 1, 1)
        state.kmin.index_copy_(2, page, torch.where(fresh, new, torch.minimum(state.kmin.index_select(2, page), new)))
        state.kmax.index_copy_(2, page, torch.where(fresh, new, torch.maximum(state.kmax.index_select(2, page), new)))
        bounds = page_bounds(view.query.float(), state.kmin, state.kmax).repeat_interleave(ps, dim=-1)
        return pool_group(bounds[..., : view.context], view.group, self.pool)[:, :, -1, :]

    def _decode_scores(self, view: LayerView) -> torch.Tensor:
        """One decode row: cached bounds of the complete pages before the current one, running bounds of it."""
        key, ps, t = view.key, self.page_size, view.context
        current = (t - 1) // ps
        cache = self.pages.get(view.layer)
        if cache is None or cache.kmin.shape[2] > current or cache.kmin.shape[:2] != key.shape[:2]:
            empty = key.new_empty(*key.shape[:2], 0, key.shape[-1], dtype=torch.float32)
            cache = self.pages[view.layer] = PageCache(empty, empty.clone())
        cache.extend(key, current, ps)
        tail = key[:, :, current * ps : t].float()
        query = view.query.float()
        full = page_bounds(
            query,
            torch.cat([cache.kmin, tail.amin(2, keepdim=True)], 2),
            torch.cat([cache.kmax, tail.amax(2, keepdim=True)], 2),
        )  # [B, Hq, 1, P]
        return full.repeat_interleave(ps, dim=-1)[..., :t]

    def _row_scores(self, view: LayerView) -> torch.Tensor:
        """Any rows (teacher forcing): each row's partial page uses the running bounds up to its position."""
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
        full = page_bounds(query, full_min, full_max)  # [B,Hq,Q,P]
        pos = view.positions
        part_min = run_min[:, :, pos].repeat_interleave(g, 1)  # [B,Hq,Q,D]
        part_max = run_max[:, :, pos].repeat_interleave(g, 1)
        partial = (query.clamp(min=0) * part_max + query.clamp(max=0) * part_min).sum(-1)  # [B,Hq,Q]
        token_page = torch.arange(t, device=key.device) // ps
        scores = full[..., token_page]  # [B,Hq,Q,T]
        same_page = token_page[None, :] == (pos // ps)[:, None]  # [Q,T]
        return torch.where(same_page, partial[..., None], scores)
