"""The attention function registered with transformers that applies the active selection policy.

transformers' AttentionInterface is our one hook into the model. A `SparseSession`, made active for
the duration of a forward pass with `activate`, tells the function which policy and budget apply and
in which mode; with no active session it is plain SDPA, so the model behaves as stock transformers.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from core.budget import Budget
from core.policies.base import LayerView, Policy
from core.policies.driver import decode_selection, prefill_state, teacher_mask
from core.trace import LayerTrace, ReadStats, StepTrace

ATTENTION_NAME = "tokenbutler_studio"
Mode = Literal["decode", "teacher"]


@dataclass
class SparseSession:
    """Policy + budget + mode for one sequence, a recurrence's per-layer state, optional tracing and capture."""

    policy: Policy
    budget: Budget
    mode: Mode = "decode"
    prompt_len: int = 0
    trace: StepTrace | None = None
    capture: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    stats: ReadStats = field(default_factory=ReadStats)
    states: dict[int, Any] = field(default_factory=dict)

    def observe_prefill(self, views: dict[int, LayerView]) -> None:
        """Decode after a dense prefill run elsewhere (views of its prompt): set up each sparse layer's state.

        Each layer gets a fresh view of the shared queries and keys, so the true attention a recurrence
        computes (P x P per head) is dropped after its layer instead of piling up in views that outlive it."""
        for layer, view in views.items():
            if self.policy.is_sparse_layer(layer):
                fresh = dataclasses.replace(view, logits=None, probs=None)
                self.states[layer] = prefill_state(self.policy, fresh, self.budget)


_ACTIVE: contextvars.ContextVar[SparseSession | None] = contextvars.ContextVar("tokenbutler_session", default=None)


@contextlib.contextmanager
def activate(session: SparseSession, model: torch.nn.Module | None = None) -> Iterator[SparseSession]:
    """Make `session` drive attention inside this block (and attach its policy's hooks to `model`)."""
    handles = session.policy.attach(model) if model is not None else []  # may refuse the model: nothing set yet
    token = _ACTIVE.set(session)
    try:
        yield session
    finally:
        for handle in handles:
            handle.remove()
        _ACTIVE.reset(token)


def _dense(module, query, key, value, attention_mask, scaling, dropout, **kwargs) -> torch.Tensor:
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )[0]


def decode_kernel_applies(query: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
    """One query row with nothing masked: the dense decode kernel runs (flash-attn or SDPA flash on CUDA;
    on CPU one SDPA per GQA group, ~2x transformers' `enable_gqa` call that an unmasked step takes there)."""
    if query.shape[2] != 1:
        return False
    return attention_mask is None or (attention_mask.dtype == torch.bool and bool(attention_mask.all()))


def _dense_step(module, query, key, value, attention_mask, scaling, dropout, **kwargs) -> torch.Tensor:
    """A dense step: the dense decode kernel for one unmasked query row, transformers' SDPA otherwise."""
    if not decode_kernel_applies(query, attention_mask):
        return _dense(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    from core.kernels import dense_decode_attention

    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return dense_decode_attention(query[:, :, 0, :], key, value, scale)[:, None, :, :]


def _dense_rows(dense_args: tuple, view: LayerView, **kwargs) -> torch.Tensor:
    """Dense attention of a pass's rows: transformers' SDPA over a whole sequence, the causal mask of each
    row's position when the pass follows a cache (a pass after a prefill, a chunk of a chunked prefill)."""
    _, query, key, value, _, scaling, _ = dense_args
    if query.shape[2] == key.shape[2]:
        return _dense(*dense_args, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = torch.nn.functional.scaled_dot_product_attention(  # one [Q, T] mask for every head, K/V never repeated
        query, key, value, attn_mask=view.causal(), scale=scale, enable_gqa=True)
    return out.transpose(1, 2).contiguous()


def _masked(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor, scale: float
) -> torch.Tensor:
    """Teacher mode: each row attends to its own kept set, given as a [B, Hkv, Q, T] mask."""
    group = query.shape[1] // key.shape[1]
    mask = keep.repeat_interleave(group, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, group), repeat_kv(value, group), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2).contiguous()


def _gathered(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, indices: torch.Tensor, scale: float
) -> torch.Tensor:
    """Decode: read only the selected K/V rows (a real gather; the Triton kernel on CUDA)."""
    from core.kernels import sparse_decode_attention

    out = sparse_decode_attention(query[:, :, 0, :], key, value, indices, scale)
    return out[:, None, :, :]


def policy_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers calls this per layer with post-RoPE query [B,Hq,Q,D] and the cache's key/value [B,Hkv,T,D].

    A static decode step (`core.static_step`) comes as the forward's `static_step` argument, not as a session:
    it runs whole under torch.compile, so nothing here may read a context variable or the host."""
    static = kwargs.pop("static_step", None)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if static is not None:
        return static.attend(module.layer_idx, query, key, value, scale), None
    session = _ACTIVE.get()
    dense_args = (module, query, key, value, attention_mask, scaling, dropout)
    if session is None:
        return _dense_step(*dense_args, **kwargs), None
    layer = module.layer_idx
    q_len, t = query.shape[2], key.shape[2]
    view = LayerView(layer, query, key, scale, torch.arange(t - q_len, t, device=key.device))
    if session.capture is not None:
        session.capture[layer] = (query.detach(), key.detach())
    policy = session.policy
    sparse = policy.is_sparse_layer(layer)
    hkv = key.shape[1]

    if session.mode == "teacher":
        rows = view.positions >= session.prompt_len
        total = int((view.positions[rows] + 1).sum()) * hkv * query.shape[0]
        if not sparse:
            session.stats.add(total, total)
            return _dense_rows(dense_args, view, **kwargs), None
        mask = teacher_mask(policy, view, session.budget, session.prompt_len, session.states.get(layer))
        kept = mask[:, :, rows].sum(-1)  # [B, Hkv, rows]
        past = (view.positions[rows] + 1).expand_as(kept)
        session.stats.add(int(kept.sum()), total, policy.side_reads(past, kept, query.shape[-1]))
        return _masked(query, key, value, mask, scale), None

    if q_len > 1:  # dense prefill
        if sparse:
            session.states[layer] = prefill_state(policy, view, session.budget)
        return _dense_rows(dense_args, view, **kwargs), None

    want_scores = session.trace is not None
    state = session.states.get(layer)
    selection = decode_selection(policy, state, view, session.budget.keep(t), want_scores) if sparse else None
    indices = None if selection is None else selection.indices
    reads_all = indices is None or indices.shape[-1] == t
    read = t if reads_all else indices.shape[-1]
    side = 0.0
    if sparse:
        past = torch.full((query.shape[0], hkv, 1), t)
        side = policy.side_reads(past, torch.full_like(past, read), query.shape[-1])
    session.stats.add(query.shape[0] * hkv * read, query.shape[0] * hkv * t, side)
    if session.trace is not None:
        started = time.perf_counter()
        scores = None if selection is None else selection.scores
        session.trace.layers[layer] = LayerTrace(
            true_probs=view.true_probs()[0, :, 0, :].half().cpu(),
            scores=None if scores is None else scores[0].float().half().cpu(),
            kept=None if indices is None else indices[0].int().cpu(),
        )
        session.stats.trace_seconds += time.perf_counter() - started
    if reads_all:
        return _dense_step(*dense_args, **kwargs), None
    return _gathered(query, key, value, indices, scale), None


def register_attention() -> None:
    """Register `policy_attention` under ATTENTION_NAME (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, policy_attention)
