"""Experimental predictor scoring + top-k selection: the API, its torch reference and the device dispatch.

`score_projected_keys` runs the Triton kernel in `scoring_kernel` for CUDA tensors (with triton importable)
and the torch reference below everywhere else; `select_topk` is torch on every device (torch.topk is a
multi-block radix select on CUDA). Not used by core: TokenButler scores with `core.predictor` and selects
with its policy's top-k. Tests: tests/test_kernels.py (the Triton kernel under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch

from core.kernels import HAS_TRITON
from core.kernels.reference import NEG_INF, length_mask


def score_projected_keys(
    q_proj: torch.Tensor, k_proj: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """q_proj [B, Hq, d], k_proj [B, Hkv, T, d] -> [B, Hkv, T] fp32: max over the GQA group's query heads of
    q.k; positions >= lengths[b] get -inf. The Triton kernel for CUDA tensors, the reference elsewhere."""
    if k_proj.is_cuda and HAS_TRITON:
        from benchmarks.experimental import scoring_kernel

        return scoring_kernel.score_projected_keys(q_proj, k_proj, lengths)
    return reference_score_projected_keys(q_proj, k_proj, lengths)


def reference_score_projected_keys(
    q_proj: torch.Tensor, k_proj: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """q_proj [B, Hq, d] . k_proj [B, Hkv, T, d] max-pooled over each GQA group -> [B, Hkv, T] fp32."""
    b, hq, d = q_proj.shape
    hkv, t = k_proj.shape[1], k_proj.shape[2]
    grouped = q_proj.reshape(b, hkv, hq // hkv, d).float()
    scores = torch.matmul(grouped, k_proj.float().transpose(-1, -2)).amax(dim=2)
    if lengths is not None:
        positions = torch.arange(t, device=k_proj.device).expand(b, -1)
        scores = scores + length_mask(lengths, positions)[:, None, :]
    return scores


def select_topk(
    scores: torch.Tensor, budgets: int | torch.Tensor, always_keep_last: bool = True
) -> torch.Tensor:
    """Best `budgets[b]` positions per KV head -> [B, Hkv, Kmax] int64, ascending, -1 padded at the end.

    Positions scored -inf (beyond a request's length) are never selected. With `always_keep_last`, the last
    finite-scored position (the current token) is always kept. Runs on any device with no host sync for an
    int budget; a tensor budget costs one `.max()` to size the output.
    """
    t = scores.shape[-1]
    work = scores.float()
    positions = torch.arange(t, device=scores.device)
    if always_keep_last:
        last = torch.where(work > NEG_INF, positions, -1).amax(dim=-1, keepdim=True)
        work = work.masked_fill(positions == last, float("inf"))
    if isinstance(budgets, int):
        top = work.topk(min(budgets, t), dim=-1, sorted=False)
        keep = top.values > NEG_INF
    else:
        budgets = budgets.to(scores.device)
        top = work.topk(min(int(budgets.max()), t), dim=-1, sorted=True)
        ranks = torch.arange(top.indices.shape[-1], device=scores.device)
        keep = (top.values > NEG_INF) & (ranks < budgets[:, None, None])
    ordered = torch.where(keep, top.indices, t).sort(dim=-1).values
    return ordered.masked_fill(ordered == t, -1)
