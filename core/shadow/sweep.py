"""Language-model loss of one text under many masks, several masks per batched forward.

The mask applies to every position (the prompt too: a masked model reads it); the loss counts the
tokens from `start` on, so a mask chosen from a prompt is judged on the text that follows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from core.models import LoadedModel
from core.shadow.importance import check_ids
from core.shadow.masking import ShadowMask, masked

MASKS_PER_FORWARD = 8


@torch.no_grad()
def masked_nll(lm: LoadedModel, ids: torch.Tensor, masks: Sequence[ShadowMask], start: int = 1,
               batch_size: int = MASKS_PER_FORWARD) -> list[float]:
    """Mean next-token loss (nats) of tokens start..T-1 of `ids` [T] or [1, T] under each mask."""
    ids = check_ids(ids)
    if ids.shape[0] != 1 or not 1 <= start < ids.shape[1]:
        raise ValueError(f"Need one text and 1 <= start < {ids.shape[1]}, got {ids.shape[0]} texts and start={start}.")
    ids = ids.to(lm.device)
    targets = ids[0, start:]
    losses: list[float] = []
    for first in range(0, len(masks), batch_size):
        group = masks[first : first + batch_size]
        with masked(lm, ShadowMask.stack(group)):
            logits = lm.model(ids.expand(len(group), -1), logits_to_keep=ids.shape[1] - start + 1).logits[:, :-1]
        nll = nn.functional.cross_entropy(logits.float().transpose(1, 2), targets.expand(len(group), -1),
                                          reduction="none")
        losses += nll.mean(dim=1).tolist()
    return losses


def perplexity(mean_nll: float) -> float:
    return math.exp(mean_nll)
