"""Sparse generation: dense prefill, then token by token reading only the selected K/V rows.

`generate` streams one `StepEvent` per new token (with a per-layer trace on request);
`forward_teacher` runs a whole sequence in one pass with each row under its own budget;
`decode_forced` really decodes given tokens (the evaluation's check that both modes agree).
`decode_tokens` is the one token-by-token loop (generate, decode_forced, trace_replay, the evaluation's tasks).
`trace_replay` decodes tokens already generated again with tracing on: the page's Inspect traces, kept apart
from the untraced run whose speed the page reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from core.attention import SparseSession, activate
from core.budget import Budget
from core.capture import views_from_capture
from core.kvcache import fork_cache, preallocated_cache
from core.models import LoadedModel
from core.policies import Policy, make_policy
from core.policies.base import LayerView
from core.trace import ReadStats, StepTrace


class PromptError(ValueError):
    """A prompt that cannot be decoded (empty, or longer than the model's context)."""


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling and output settings; temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    chat: bool = True
    trace: bool = False
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")


@dataclass
class StepEvent:
    """One generated token, the text so far and the running measurements."""

    index: int
    token_id: int
    delta: str
    text: str
    prompt_tokens: int
    sparsity: float
    tokens_per_s: float  # decode rate so far, tracing included
    trace: StepTrace | None
    done: bool
    logits: torch.Tensor | None = None
    untraced_tokens_per_s: float = 0.0  # the same rate with the time spent tracing taken out


def encode_prompt(lm: LoadedModel, prompt: str, chat: bool = True, reserve: int = 0) -> torch.Tensor:
    """Token ids [1, P] of the prompt (chat template for instruct models); clear errors for bad input."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("The prompt is empty: type some text to decode from.")
    if chat and lm.is_chat:
        enc = lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        ids = enc["input_ids"]
    else:
        ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    limit = lm.spec.max_context
    if ids.shape[1] + reserve > limit:
        raise PromptError(
            f"The prompt is {ids.shape[1]} tokens; with {reserve} new tokens it exceeds the model's "
            f"context of {limit} tokens. Shorten it or ask for fewer new tokens."
        )
    return ids.to(lm.device)


def resolve_policy(policy: Policy | str) -> Policy:
    return make_policy(policy) if isinstance(policy, str) else policy


def _next_token(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator) -> int:
    if config.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > config.top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0))
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def prefill(lm: LoadedModel, session: SparseSession, cache: Cache, ids: torch.Tensor) -> torch.Tensor:
    """The dense prefill of `ids` [1, P] into `cache` under `session`: the last row's logits [1, V]."""
    with torch.inference_mode(), activate(session, lm.model):
        return lm.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]


def decode_tokens(lm: LoadedModel, session: SparseSession, cache: Cache, tokens: torch.Tensor) -> torch.Tensor:
    """Feed `tokens` [1, n] one per step through `cache` under `session`: logits [n, V] (real decoding).

    The session is entered per call: gradio may resume `generate` on another thread between steps.
    """
    with torch.inference_mode(), activate(session, lm.model):
        rows = [lm.model(input_ids=t, past_key_values=cache, use_cache=True).logits[0] for t in tokens.split(1, dim=1)]
    return torch.cat(rows) if rows else torch.empty(0, lm.spec.vocab_size, device=lm.device)


@dataclass
class Prefilled:
    """A prompt's dense prefill: the prefill is dense for every method, so one serves them all, each
    decoding from its own copy of the cache (`generate(..., prefilled=...)`)."""

    ids: torch.Tensor  # [1, P]
    logits: torch.Tensor  # [1, V], the last prompt row
    cache: Cache
    views: dict[int, LayerView]  # per layer, the prompt's queries and keys (a recurrence's prefill state)
    seconds: float


def prompt_tensor(lm: LoadedModel, prompt: str | torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Token ids [1, P] on the model's device, checked against the context with the new tokens."""
    ids = prompt if isinstance(prompt, torch.Tensor) else encode_prompt(lm, prompt, config.chat, config.max_new_tokens)
    if ids.numel() == 0:
        raise PromptError("The prompt is empty: type some text to decode from.")
    ids = ids.view(1, -1).to(lm.device)
    if ids.shape[1] + config.max_new_tokens > lm.spec.max_context:
        raise PromptError(
            f"{ids.shape[1]} prompt tokens + {config.max_new_tokens} new exceed the context of {lm.spec.max_context}."
        )
    return ids


PREFILL_CHUNK = 1024  # a long prompt is prefilled this many tokens at a time, so progress can be shown


def prefill_prompt(
    lm: LoadedModel,
    prompt: str | torch.Tensor,
    config: GenerationConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Prefilled:
    """Run a prompt's dense prefill once, keeping what every method's decoding starts from.

    A prompt longer than PREFILL_CHUNK is prefilled in chunks through the cache (each chunk's rows read
    the cache and themselves, causally: the same attention), calling `on_progress(done, total)` after
    each, so a page can show progress and an ETA for a long prompt before the first token."""
    config = config or GenerationConfig()
    ids = prompt_tensor(lm, prompt, config)
    total = ids.shape[1]
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    session = SparseSession(make_policy("dense"), Budget.dense(), mode="decode", prompt_len=total, capture=captured)
    cache = preallocated_cache(lm.model.config, total)
    start = time.perf_counter()
    queries: dict[int, list[torch.Tensor]] = {}
    for begin in range(0, total, PREFILL_CHUNK):
        logits = prefill(lm, session, cache, ids[:, begin : begin + PREFILL_CHUNK])
        for layer, (query, _) in captured.items():
            queries.setdefault(layer, []).append(query)
        if on_progress is not None:
            on_progress(min(begin + PREFILL_CHUNK, total), total)
    whole = {layer: (torch.cat(queries[layer], dim=2), key) for layer, (_, key) in captured.items()}
    views = views_from_capture(whole, lm.spec.head_dim**-0.5)
    return Prefilled(ids, logits, cache, views, time.perf_counter() - start)


def from_prefill(
    shared: Prefilled, policy: Policy, budget: Budget, mode: str, rows: int
) -> tuple[SparseSession, Cache]:
    """A session that has seen `shared`'s dense prefill and a copy of its cache with room for `rows` more rows:
    where every run from a shared prefill starts (generate, trace_replay, forward_teacher_after)."""
    prompt_len = shared.ids.shape[1]
    session = SparseSession(policy=policy, budget=budget, mode=mode, prompt_len=prompt_len)
    session.observe_prefill(shared.views)
    return session, fork_cache(shared.cache, prompt_len + rows)


def generate(
    lm: LoadedModel,
    prompt: str | torch.Tensor | Prefilled,
    policy: Policy | str = "dense",
    budget: Budget | None = None,
    config: GenerationConfig | None = None,
) -> Iterator[StepEvent]:
    """Stream tokens decoded with `policy` reading `budget` past tokens per KV head at every step.

    Given a `Prefilled` prompt, decoding starts from a copy of its cache instead of a new prefill."""
    config = config or GenerationConfig()
    budget = budget or Budget.dense()
    policy = resolve_policy(policy)
    policy.reset()
    if isinstance(prompt, Prefilled):
        ids = prompt_tensor(lm, prompt.ids, config)
        prompt_len = ids.shape[1]
        session, cache = from_prefill(prompt, policy, budget, "decode", config.max_new_tokens)
        logits = prompt.logits
    else:
        ids = prompt_tensor(lm, prompt, config)
        prompt_len = ids.shape[1]
        session = SparseSession(policy=policy, budget=budget, mode="decode", prompt_len=prompt_len)
        cache = preallocated_cache(lm.model.config, prompt_len + config.max_new_tokens)
        logits = prefill(lm, session, cache, ids)
    generator = torch.Generator().manual_seed(config.seed)
    eos = set(_eos_ids(lm))
    generated: list[int] = []
    text = ""
    decoding = 0.0  # seconds inside the model's decode steps only (not the consumer's work between yields)
    trace = None
    for index in range(config.max_new_tokens):
        token = _next_token(logits[0], config, generator)
        generated.append(token)
        new_text = lm.tokenizer.decode(generated, skip_special_tokens=True)
        delta, text = new_text[len(text) :], new_text
        done = index == config.max_new_tokens - 1 or (config.stop_at_eos and token in eos)
        untraced = decoding - session.stats.trace_seconds
        yield StepEvent(
            index,
            token,
            delta,
            text,
            prompt_len,
            session.stats.sparsity,
            index / decoding if index and decoding > 0 else 0.0,
            trace,
            done,
            logits[0],
            index / untraced if index and untraced > 0 else 0.0,
        )
        if done:
            return
        trace = StepTrace(position=prompt_len + index) if config.trace else None
        session.trace = trace
        started = time.perf_counter()
        logits = decode_tokens(lm, session, cache, torch.tensor([[token]], device=lm.device))
        decoding += time.perf_counter() - started


def trace_replay(
    lm: LoadedModel, shared: Prefilled, policy: Policy | str, budget: Budget, generated: list[int]
) -> Iterator[StepTrace]:
    """The traces of decoding `generated` (the tokens a run wrote after `shared`'s prompt) again with
    `policy`: one per decode step, step i reading generated token i - 1, as a traced `generate` records
    them. The steps are the same real decoding (same cache, same selections); tracing only records
    them, at a cost the untraced run does not pay."""
    policy = resolve_policy(policy)
    policy.reset()
    prompt_len = shared.ids.shape[1]
    session, cache = from_prefill(shared, policy, budget, "decode", len(generated))
    for index, token in enumerate(generated[:-1]):
        session.trace = StepTrace(position=prompt_len + index)
        decode_tokens(lm, session, cache, torch.tensor([[token]], device=lm.device))
        yield session.trace


def _eos_ids(lm: LoadedModel) -> list[int]:
    eos = lm.model.generation_config.eos_token_id if lm.model.generation_config else None
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def forward_teacher(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    policy: Policy | str,
    budget: Budget,
    prompt_len: int = 0,
) -> tuple[torch.Tensor, ReadStats]:
    """One teacher-forced pass: rows before `prompt_len` are dense, later rows keep their budget.

    Returns logits [B, T, V] and the read counts over the sparse rows.
    """
    policy = resolve_policy(policy)
    ids = input_ids.view(1, -1) if input_ids.dim() == 1 else input_ids
    policy.reset()
    session = SparseSession(policy=policy, budget=budget, mode="teacher", prompt_len=prompt_len)
    with torch.inference_mode(), activate(session, lm.model):
        logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits
    return logits, session.stats


def forward_teacher_after(
    lm: LoadedModel, shared: Prefilled, tail: torch.Tensor, policy: Policy | str, budget: Budget
) -> tuple[torch.Tensor, ReadStats]:
    """The teacher-forced pass over `tail` [1, n] after a shared dense prefill: logits [1, n, V] equal to
    rows P.. of `forward_teacher` over prompt + tail (tests check it), without recomputing the prompt,
    which is dense for every method and budget and so is run once for all of them."""
    policy = resolve_policy(policy)
    policy.reset()
    session, cache = from_prefill(shared, policy, budget, "teacher", tail.shape[-1])
    with torch.inference_mode(), activate(session, lm.model):
        logits = lm.model(input_ids=tail.view(1, -1).to(lm.device), past_key_values=cache, use_cache=True).logits
    return logits, session.stats


def decode_forced(
    lm: LoadedModel, input_ids: torch.Tensor, policy: Policy, budget: Budget, prompt_len: int
) -> tuple[torch.Tensor, ReadStats]:
    """Real decoding over given tokens: dense prefill of the first `prompt_len`, then one token per step.

    Returns logits [T - prompt_len + 1, V] for positions prompt_len - 1 .. T - 1 (the teacher-forced
    rows they must match) and the K/V rows read by the decode steps.
    """
    ids = input_ids.view(1, -1).to(lm.device)
    if not 1 <= prompt_len <= ids.shape[1]:
        raise ValueError(f"prompt_len must be in [1, {ids.shape[1]}], got {prompt_len}.")
    policy.reset()
    session = SparseSession(policy=policy, budget=budget, mode="decode", prompt_len=prompt_len)
    cache = preallocated_cache(lm.model.config, ids.shape[1])
    last = prefill(lm, session, cache, ids[:, :prompt_len])
    rows = decode_tokens(lm, session, cache, ids[:, prompt_len:])
    return torch.cat([last, rows]), session.stats
