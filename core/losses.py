"""Training losses of the predictor: how far predicted logits of sampled query rows are from the true ones.

Every loss takes one layer's rows, pred and true pre-softmax logits [B, Hq, R, T] and the causal mask
[R, T] (True where row r may read token t), and averages over rows:
- "kl": KL(true softmax || predicted softmax) over each row's causal past (distribution matching);
- "mse": MSE of the logits over the causal past (generation 1's loss);
- "rank": pairwise logistic ranking of each row's true top tokens (at SELECT_FRACTION of its past)
  above tokens outside that set, on up to PAIR_SIDE sampled tokens per side;
- "bce": class-balanced binary cross-entropy on top-k membership at each of LABEL_FRACTIONS, the
  predicted logit measured against the row's own predicted cut (the k-th largest, held fixed) in units of
  the row's spread (its standard deviation over the past), so the loss asks for the decision the decoder
  makes, above or below the cut, and cannot fall by inflating the logits (without the division it
  diverged in training: the loss grew from 0.7 to 40 in 46 steps as the logits' scale grew);
- "kl-top": KL restricted to the true selected set (both softmaxes renormalised over that set).
The selection losses target the decision at the budgets that matter (90-95% sparsity); "kl" weighs
every token by the attention it gets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.metrics import top_count, top_mask

LOSSES = ("kl", "mse", "rank", "bce", "kl-top")
SELECT_FRACTION = 0.1
LABEL_FRACTIONS = (0.05, 0.1)
PAIR_SIDE = 32


def true_top(true: torch.Tensor, causal: torch.Tensor, frac: float) -> torch.Tensor:
    """[B, Hq, R, T] bool: each row's ceil(frac * past) largest true logits within its causal past.

    Ties go to the earlier token (a stable sort), as everywhere in the project."""
    return top_mask(true.masked_fill(~causal, float("-inf")), top_count(causal.sum(-1), frac))


def kl_loss(pred: torch.Tensor, true: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax true || softmax pred), both over `support` (broadcastable bool)."""
    support = support.expand_as(pred)
    log_q = torch.log_softmax(pred.masked_fill(~support, float("-inf")), dim=-1)
    p = torch.softmax(true.masked_fill(~support, float("-inf")), dim=-1)
    log_p = torch.log(p.clamp_min(1e-30))
    return (p * (log_p - log_q.masked_fill(~support, 0.0))).sum(-1).mean()


def _sample_side(
    members: torch.Tensor, count: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `count` random members of each row of `members` [..., T]: (indices [..., count], valid [..., count])."""
    noise = torch.rand(members.shape, generator=generator, device=members.device)
    keyed = noise.masked_fill(~members, -1.0)
    count = min(count, members.shape[-1])
    values, indices = keyed.topk(count, dim=-1)
    return indices, values >= 0


def rank_loss(pred: torch.Tensor, true: torch.Tensor, causal: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Pairwise logistic loss log(1 + exp(-(s_pos - s_neg))) over sampled (top, outside) pairs of each row."""
    top = true_top(true, causal, SELECT_FRACTION)
    outside = causal.expand_as(top) & ~top
    pos, pos_ok = _sample_side(top, PAIR_SIDE, generator)
    neg, neg_ok = _sample_side(outside, PAIR_SIDE, generator)
    margin = pred.gather(-1, pos)[..., :, None] - pred.gather(-1, neg)[..., None, :]  # [B, Hq, R, P, N]
    valid = (pos_ok[..., :, None] & neg_ok[..., None, :]).to(pred.dtype)
    return (F.softplus(-margin) * valid).sum() / valid.sum().clamp_min(1.0)


def bce_loss(pred: torch.Tensor, true: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE of `pred - cut` against true top-k membership, averaged over LABEL_FRACTIONS."""
    support = causal.expand_as(pred)
    past = causal.sum(-1).to(pred.dtype)  # [R]
    mean = (pred * support).sum(-1, keepdim=True) / past[:, None]
    spread = (((pred - mean) * support) ** 2).sum(-1, keepdim=True).div(past[:, None]).sqrt().clamp_min(1e-6)
    losses = []
    for frac in LABEL_FRACTIONS:
        labels = true_top(true, causal, frac)
        keep = top_count(past, frac)
        ranked = pred.masked_fill(~support, float("-inf")).sort(dim=-1, descending=True).values
        cut = ranked.gather(-1, (keep - 1).expand(*pred.shape[:-2], -1)[..., None]).detach()  # [B, Hq, R, 1]
        margin = (pred - cut) / spread
        positives = keep.to(pred.dtype)  # [R]
        weight = torch.where(labels, ((past - positives) / positives)[:, None], torch.ones_like(pred))
        per_token = F.binary_cross_entropy_with_logits(margin, labels.to(pred.dtype), weight=weight,
                                                       reduction="none")
        losses.append((per_token * support).sum(-1).div(2 * (past - positives).clamp_min(1.0)).mean())
    return torch.stack(losses).mean()


def row_loss(pred: torch.Tensor, true: torch.Tensor, causal: torch.Tensor, kind: str,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Loss `kind` (one of LOSSES) of one layer's sampled rows ([B, Hq, R, T]) over each row's causal past."""
    if kind == "kl":
        return kl_loss(pred, true, causal)
    if kind == "mse":
        return ((pred - true) ** 2).masked_select(causal.expand_as(pred)).mean()
    if kind == "rank":
        return rank_loss(pred, true, causal, generator)
    if kind == "bce":
        return bce_loss(pred, true, causal)
    if kind == "kl-top":
        return kl_loss(pred, true, true_top(true, causal, SELECT_FRACTION))
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}.")

