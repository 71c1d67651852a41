"""A decode step with static shapes and no host synchronisation (issue 30): the step torch.compile traces
whole (fullgraph) on CPU and a CUDA graph captures on GPU (issue 31).

gpt-fast's shape: a KV cache of fixed capacity (transformers' `StaticCache`, each row written at a
device-side position), one `StaticDecoder.step` (a token in, the greedy next token out, on the device)
and a host loop that only counts. The model is reached through the registered attention function alone
(`core.attention.policy_attention` receives this decoder as the forward's `static_step` argument).

- Capacity: prompt + new tokens rounded up to CAPACITY_BUCKET (capped at the model's context), so one
  compiled graph serves every prompt of a bucket. Attention reads up to the live length; rows past it are
  masked (dense) or never candidates (sparse).
- Rows per step: the budget's count at full capacity, rounded up to ROW_BUCKET (capped at the capacity).
  Each step keeps exactly the budget's count for its live length, the tokens `core.decode.generate` keeps
  (`core.policies.driver.static_indices`: sinks, best, recent window), and fills the other slots with -1,
  which attention masks (-inf). The reads are generate's; only the gather's width is fixed.
- Positions, lengths, counts and read statistics are device tensors; the statistics are read once, at the end.
  `StaticDecoder.load` puts another prompt of the bucket into the same buffers, in place, so a step captured
  as a CUDA graph (`core.graphs`) replays on it.
- Selection is tensor-only per method (`Policy.static_codes` / `static_scores`); a method scoring key codes
  runs the fused numba selection as one opaque custom op on CPU (`CodeQuery.select`: it reads the step's
  counts on the host, a free read there) or, `fused=False` and off CPU, plain torch (tested to choose alike).
- Refused, with a clear error: recurrences (H2O, TOVA, SnapKV: their state follows every past choice) and
  budgets below the protected sinks + recent window at the first step. There is no stop at EOS: stopping
  early needs a host read, so a fixed count of tokens is decoded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StaticCache

from core.budget import Budget
from core.decode import GenerationConfig, Prefilled, PromptError, prefill_prompt, resolve_policy
from core.kernels import dense_decode_attention, sparse_decode_attention
from core.models import LoadedModel
from core.policies import Policy
from core.policies.base import LayerView
from core.policies.driver import static_indices
from core.trace import ReadStats

CAPACITY_BUCKET = 256  # the cache's capacity is a multiple of this (one compiled graph per bucket)
ROW_BUCKET = 64  # rows gathered per KV head and step: the budget at full capacity, rounded up to this


class StaticStepError(ValueError):
    """A method or budget the static step cannot run (it says which, and what to use instead)."""


def round_up(count: int, bucket: int) -> int:
    return -(-count // bucket) * bucket


def capacity_for(prompt_len: int, max_new_tokens: int, max_context: int) -> int:
    """The cache's capacity, the context-length bucket: one compiled or captured step serves each."""
    return min(round_up(prompt_len + max_new_tokens, CAPACITY_BUCKET), max_context)


@dataclass
class StaticResult:
    """A static decode's tokens and reads (read from the device once, at the end)."""

    tokens: list[int]
    stats: ReadStats
    layer_reads: list[int]  # K/V rows read per layer over every step (all batch rows and KV heads)
    first_step_seconds: float  # the first step: a compile, when compiled
    seconds: float  # the other steps


class StaticDecoder:
    """One sequence's static decode from a shared dense prefill: device-resident buffers and the step."""

    def __init__(
        self,
        lm: LoadedModel,
        shared: Prefilled,
        policy: Policy,
        budget: Budget,
        max_new_tokens: int,
        fused: bool = True,
        dense_backend: str | None = None,
    ) -> None:
        prompt_len = shared.ids.shape[1]
        if prompt_len + max_new_tokens > lm.spec.max_context:
            raise PromptError(
                f"{prompt_len} prompt tokens + {max_new_tokens} new exceed the context of {lm.spec.max_context}."
            )
        self.model, self.policy, self.budget = lm.model, policy, budget
        self.fused = fused and shared.logits.device.type == "cpu"  # elsewhere the op's host read would sync
        self.dense_backend = dense_backend  # None: core.kernels.dense's choice (a benchmark times each)
        self.prompt_len = prompt_len
        self.capacity = capacity_for(prompt_len, max_new_tokens, lm.spec.max_context)
        self.rows = min(self.capacity, round_up(budget.keep(self.capacity), ROW_BUCKET))
        _check_supported(policy, budget, prompt_len + 1)
        self.cache = StaticCache(config=lm.model.config, max_cache_len=self.capacity)
        for index, layer in enumerate(shared.cache.layers):  # the prompt's rows, copied: the prefill stays shared
            self.cache.layers[index].update(layer.keys, layer.values)  # each layer writes at its own device count,
            # which starts at the prompt's length and advances with `position`, a row per step
        device = shared.logits.device
        self.position = torch.tensor([prompt_len], device=device)  # the token being decoded
        self.read = torch.zeros(len(shared.cache.layers), dtype=torch.long, device=device)
        self.total = torch.zeros_like(self.read)
        for handle in policy.attach(self.model):  # binds the policy to the model (a predictor's fit, its RoPE
            handle.remove()  # tables) before its state is built; the hooks go on again while decoding
        self.states = {
            layer: policy.static_prefill(view, self.capacity)
            for layer, view in shared.views.items()
            if policy.is_sparse_layer(layer)
        }
        self.first_token = shared.logits.argmax(dim=-1, keepdim=True)  # [B, 1]

    def load(self, shared: Prefilled, max_new_tokens: int) -> None:
        """Start over from another prompt of this bucket, in place: every device buffer (cache rows, position,
        counters, the policy's states) keeps its address, so a step captured as a CUDA graph replays on it."""
        batch, prompt_len = shared.ids.shape
        held = self.cache.layers[0].keys.shape[0]
        if prompt_len + max_new_tokens > self.capacity or batch != held:
            raise StaticStepError(
                f"{batch} x {prompt_len} prompt tokens + {max_new_tokens} new do not fit this decoder's bucket "
                f"({held} x {self.capacity} tokens): build a decoder for their bucket."
            )
        _check_supported(self.policy, self.budget, prompt_len + 1)
        self.cache.reset()  # in place: rows zeroed, each layer's device-side write position back to 0
        for mine, theirs in zip(self.cache.layers, shared.cache.layers, strict=True):
            mine.update(theirs.keys, theirs.values)  # the prompt's rows; the write position moves to its end
        self.prompt_len = prompt_len
        self.position.fill_(prompt_len)
        self.read.zero_()
        self.total.zero_()
        for layer, state in self.states.items():
            copy_into(state, self.policy.static_prefill(shared.views[layer], self.capacity))
        self.first_token = shared.logits.argmax(dim=-1, keepdim=True)

    def attend(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """One layer's attention of the step's query row [B, Hq, 1, D] over the fixed-capacity cache
        [B, Hkv, C, D]: [B, 1, Hq, D]. Counts its reads on the device."""
        length = self.position + 1
        b, hkv = key.shape[:2]
        if self.policy.is_sparse_layer(layer):
            view = LayerView(layer, query, key, scale, self.position)
            read = self.budget.keep_on_device(length)
            indices = static_indices(self.policy, self.states.get(layer), view, read, self.rows, self.fused)
            out = sparse_decode_attention(query[:, :, 0, :], key, value, indices, scale, padded=True)
        else:
            read = length
            out = dense_decode_attention(query[:, :, 0, :], key, value, scale, length.expand(b), self.dense_backend)
        self.read[layer : layer + 1] += read * b * hkv
        self.total[layer : layer + 1] += length * b * hkv
        return out[:, None]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """One decode step, tensor ops only: `token` [1, 1] in, the greedy next token [1, 1] out, the
        device-side position advanced."""
        logits = self.model(
            input_ids=token,
            position_ids=self.position.view(1, 1),
            past_key_values=self.cache,
            use_cache=True,
            static_step=self,
        ).logits
        self.position.add_(1)
        return logits[:, -1, :].argmax(dim=-1, keepdim=True)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """The policy's forward hooks (TokenButler's producers) on the model while decoding."""
        handles = self.policy.attach(self.model)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run(self, new_tokens: int, step: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StaticResult:
        """Decode `new_tokens` tokens (the first from the prefill) with `step` (default: eager `self.step`);
        the host reads the tokens and the counts once, at the end."""
        step = step or self.step
        tokens = torch.empty(1, new_tokens, dtype=torch.long, device=self.first_token.device)
        token = self.first_token
        marks = [time.perf_counter()]
        with torch.no_grad(), self.attached():
            for index in range(new_tokens):
                tokens[:, index : index + 1] = token
                if index + 1 < new_tokens:
                    token = step(token)
                    marks.append(time.perf_counter())
        steps = new_tokens - 1
        return StaticResult(
            tokens[0].tolist(),
            self.stats(steps),
            self.read.tolist(),
            marks[min(1, steps)] - marks[0],
            marks[-1] - marks[min(1, steps)],
        )

    def stats(self, steps: int) -> ReadStats:
        """The reads of `steps` steps as `core.decode.generate` counts them, the side reads (summaries, page
        bounds) from each step's live length and kept count."""
        stats = ReadStats(int(self.read.sum()), int(self.total.sum()))
        sparse = sum(self.policy.is_sparse_layer(layer) for layer in range(len(self.cache.layers)))
        if sparse and steps:
            b, hkv, _, head_dim = self.cache.layers[0].keys.shape
            past = torch.arange(self.prompt_len + 1, self.prompt_len + 1 + steps).expand(b, hkv, -1)
            stats.side = sparse * self.policy.side_reads(past, self.budget.keep_on_device(past), head_dim)
        return stats


def copy_into(state: Any, fresh: Any) -> None:
    """Copy a policy's freshly prefilled static state into the one a step holds, tensor by tensor, in place
    (None, a tensor, or an object whose tensor attributes are its buffers; other attributes are set)."""
    if state is None:
        return
    if isinstance(state, torch.Tensor):
        state.copy_(fresh)
        return
    for name, value in vars(fresh).items():
        if isinstance(value, torch.Tensor):
            getattr(state, name).copy_(value)
        else:
            setattr(state, name, value)


def _check_supported(policy: Policy, budget: Budget, first_length: int) -> None:
    """Refuse what the static step cannot run, before anything is compiled."""
    if policy.is_dense:
        return
    if not policy.stateless:
        raise StaticStepError(
            f"{policy.name} is a recurrence (its state follows every past choice): the static step runs scorers "
            "only; decode it with core.decode.generate."
        )
    protected = policy.sinks + max(policy.recent, 1)
    if budget.keep(first_length) < protected:
        raise StaticStepError(
            f"The budget {budget.label} keeps {budget.keep(first_length)} tokens at the first step, fewer than the "
            f"{protected} protected sinks and recent tokens: the static step needs room for them all."
        )


def compiled(decoder: StaticDecoder, backend: str = "inductor") -> Callable[[torch.Tensor], torch.Tensor]:
    """`decoder.step` under torch.compile, whole (fullgraph: a graph break is an error) and with static shapes."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # a graph per decoder
    return torch.compile(decoder.step, fullgraph=True, dynamic=False, backend=backend)


def generate_static(
    lm: LoadedModel,
    prompt: torch.Tensor | Prefilled,
    policy: Policy | str = "dense",
    budget: Budget | None = None,
    max_new_tokens: int = 64,
    compile: bool = True,
    fused: bool = True,
) -> StaticResult:
    """Greedy decoding of `max_new_tokens` tokens after `prompt` (ids [1, P], or a shared `Prefilled`) by the
    static step, compiled (`compile`) or eager; `fused` picks the fused selection for code-scoring methods."""
    budget = budget or Budget.dense()
    policy = resolve_policy(policy)
    policy.reset()
    shared = (
        prompt
        if isinstance(prompt, Prefilled)
        else prefill_prompt(lm, prompt, GenerationConfig(max_new_tokens=max_new_tokens))
    )
    decoder = StaticDecoder(lm, shared, policy, budget, max_new_tokens, fused)
    return decoder.run(max_new_tokens, compiled(decoder) if compile else None)
