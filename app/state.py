"""What the page keeps: one model shared read-only by everyone, and each visitor's last run apart.

The model is loaded once per process (core.models.load caches it). A visitor's traces live in a
`RunRecord` inside gr.State, so two visitors never see each other's runs, and a cap on trace memory
keeps one long run from filling the server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from core import models
from core.policies import REGISTRY, policy_names
from core.trace import StepTrace
from core.traceviews import trace_nbytes

TRACE_BYTES_CAP = 128 * 2**20
STATE_TTL_S = 1800


THREADS_ENV = "TOKENBUTLER_THREADS"


def decode_threads() -> int:
    """Torch threads for the page's decoding: $TOKENBUTLER_THREADS, or every core but one (at least one).

    The page decodes while its own server streams each token to the browser; on a 2-core machine (a free
    Space) two decode threads share both cores with that work, and the many small ops of a sparse step
    suffer most (docs/results.md, the page's speed)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV} must be a whole number of threads >= 1, got {value!r}.")
        return int(value)
    return max(1, (os.cpu_count() or 1) - 1)


def shared_model() -> models.LoadedModel:
    """The embedded default model; visitors never choose a path or hub id."""
    return models.load(models.DEFAULT_MODEL)


def sparse_methods() -> list[str]:
    """Every registered method but dense (the reference the page shows beside them)."""
    return [name for name in policy_names() if name != "dense"]


def ready_methods() -> list[str]:
    """Sparse methods that can run now (TokenButler only once its predictor ships in assets/predictor/)."""
    return [name for name in sparse_methods() if REGISTRY[name].available()]


def default_method() -> str:
    """The method the page starts on: TokenButler when it can run, the oracle until then."""
    return "tokenbutler" if "tokenbutler" in ready_methods() else "oracle"


@dataclass
class RunRecord:
    """One visitor's last generation: the token texts and per-step traces Inspect draws from."""

    policy: str
    budget_label: str
    prompt_len: int
    num_layers: int
    num_heads: int
    group: int
    token_ids: list[int]
    tokens: list[str]
    traces: list[StepTrace] = field(default_factory=list)
    trace_bytes: int = 0
    capped: bool = False

    @classmethod
    def start(cls, lm: models.LoadedModel, policy: str, budget_label: str, prompt_ids: list[int]) -> RunRecord:
        spec = lm.spec
        return cls(policy=policy, budget_label=budget_label, prompt_len=len(prompt_ids), num_layers=spec.num_layers,
                   num_heads=spec.num_heads, group=spec.group_size, token_ids=list(prompt_ids),
                   tokens=[lm.tokenizer.decode([t]) for t in prompt_ids])

    def add_token(self, lm: models.LoadedModel, token_id: int) -> None:
        """Append a generated token."""
        self.token_ids.append(token_id)
        self.tokens.append(lm.tokenizer.decode([token_id]))

    def add_trace(self, trace: StepTrace) -> None:
        """Append the next decode step's trace (dropped once the memory cap is reached)."""
        if self.capped:
            return
        size = trace_nbytes(trace)
        if self.trace_bytes + size > TRACE_BYTES_CAP:
            self.capped = True
            return
        self.traces.append(trace)
        self.trace_bytes += size

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def steps(self) -> int:
        """Traced decode steps (the first token comes from the prefill and has none)."""
        return len(self.traces)

    def step_trace(self, step: int) -> StepTrace:
        """Trace of decode step `step` (1-based, as the slider shows it)."""
        return self.traces[step - 1]
