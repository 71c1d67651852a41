"""Offline channel calibration for Double Sparsity: rank each KV head's channels by their mean |q_i k_i|.

As in the paper's calibration, each token's post-RoPE query meets its own key, channel by channel;
the absolute products are averaged over calibration tokens and over the query heads of each KV head's
group. The text is the training split, so the held-out text a policy is measured on is never seen.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from core.capture import capture_views
from core.models import LoadedModel
from core.policies.base import LayerView
from core.policies.double_sparsity import ChannelRanking


def channel_importance(view: LayerView) -> torch.Tensor:
    """[Hkv, D] sum over rows and the group's query heads of |q_i k_i| (each row with its own key)."""
    b, hq, q, d = view.query.shape
    hkv = view.key.shape[1]
    query = view.query.float().view(b, hkv, hq // hkv, q, d)
    key = view.key.float()[:, :, None, -q:, :]
    return (query * key).abs().sum(dim=(0, 2, 3))


def calibrate_channels(lm: LoadedModel, chunks: list[torch.Tensor], progress: bool = True) -> ChannelRanking:
    """The channel ranking of every layer and KV head from dense passes over `chunks` (token id tensors)."""
    spec = lm.spec
    total = torch.zeros(spec.num_layers, spec.num_kv_heads, spec.head_dim)
    tokens = 0
    for ids in tqdm(chunks, desc="calibrating channels", disable=not progress):
        for layer, view in capture_views(lm, ids).items():
            total[layer] += channel_importance(view).cpu()
        tokens += ids.numel()
    config = {"base_model": spec.name, "fingerprint": spec.fingerprint, "layers": spec.num_layers,
              "kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim, "criterion": "mean |q_i k_i|, post-RoPE",
              "chunks": len(chunks), "tokens": tokens}
    return ChannelRanking.from_importance(total, config)
