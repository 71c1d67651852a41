"""Capture every layer's post-RoPE queries and keys from one dense pass, as LayerViews.

Metrics score a policy's selection against the dense model's true attention; capturing once and
selecting many times (policies x budgets) is what keeps the Budgets tab and the evaluation cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.attention import SparseSession, activate
from core.budget import Budget
from core.models import LoadedModel
from core.policies import Policy, make_policy
from core.policies.base import LayerView


def capture_views(
    lm: LoadedModel, input_ids: torch.Tensor, policies: Sequence[Policy] = ()
) -> dict[int, LayerView]:
    """One dense forward pass; per layer a view over all T rows (positions 0..T-1).

    Each policy in `policies` is reset and its forward hooks ride along on this pass,
    so a learned predictor sees the same hidden states; the hooks are removed afterwards.
    """
    ids = input_ids.view(1, -1) if input_ids.dim() == 1 else input_ids
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    session = SparseSession(policy=make_policy("dense"), budget=Budget.dense(), mode="teacher", capture=captured)
    handles = []
    try:
        for policy in policies:
            policy.reset()
            handles.extend(policy.attach(lm.model))
        with torch.inference_mode(), activate(session, lm.model):
            lm.model.model(input_ids=ids.to(lm.device), use_cache=False)  # the decoder only: no LM head
    finally:
        for handle in handles:
            handle.remove()
    return views_from_capture(captured, lm.spec.head_dim**-0.5)


def views_from_capture(captured: dict[int, tuple[torch.Tensor, torch.Tensor]], scale: float) -> dict[int, LayerView]:
    """Per layer, a view over every captured row of a pass that started at position 0 (a prefill)."""
    views = {}
    for layer, (query, key) in sorted(captured.items()):
        positions = torch.arange(key.shape[2] - query.shape[2], key.shape[2], device=key.device)
        views[layer] = LayerView(layer, query, key, scale, positions)
    return views
