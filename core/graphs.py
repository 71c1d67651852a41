"""The static decode step (core.static_step) captured as CUDA graphs, one per context-length bucket (issue 31).

Why `torch.cuda.CUDAGraph` rather than `torch.compile(mode="reduce-overhead")`: the step is already static
and sync-free, all a capture needs. A capture is one eager pass (seconds) and takes the Triton kernels and
TokenButler's forward hooks as they run; inductor would compile each bucket's step anew (minutes for 32
layers, past a device check's 8 minutes over 5 shapes and 2 methods). What reduce-overhead adds beyond the
graph, inductor's fusion of the small ops, is worth it only if the profile shows them
(benchmarks/gpu_issue31.py measures where a captured step's GPU time goes).

- `capture`: warms the step up (WARMUP steps on a side stream: Triton compiles, cuBLAS picks and allocates
  its workspaces), records one step whose next token is written back into its own input buffer (replays
  chain with no host work between them), then reloads the prompt in place, since the warm-up advanced the
  position and wrote rows. Token, position (its length is position + 1), cache, counters and the policy's
  states are preallocated device buffers; the selected indices live in the graph's pool, rewritten by each
  replay (-1 padding masked by the kernels).
- `StepGraphs`: one captured step per bucket (batch, capacity); a prompt of a captured bucket is loaded
  into its buffers in place (`StaticDecoder.load`) and replays the same graph.
- The CPU twin: off CUDA `capture` refuses (GraphCaptureError) unless given `eager_replay`, which keeps the
  same buffers and order with one eager step per replay, and refuses what a capture would (`capture_hazards`:
  host reads, ops whose output size depends on data, tensors made from host data), so the path is tested on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from core.budget import Budget
from core.decode import GenerationConfig, Prefilled, prefill_prompt
from core.models import LoadedModel
from core.policies import Policy
from core.static_step import StaticDecoder, StaticResult, capacity_for

WARMUP = 3  # eager steps before a capture
Record = Callable[[Callable[[], None]], Callable[[], None]]  # warms a step up, records it, returns its replay

# What a CUDA graph capture refuses or gets wrong: a host read, an output size that depends on the data (a
# host read inside: nonzero, a boolean mask as an index), a tensor built from host data (a host-to-device copy).
HAZARDS = frozenset({
    "aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
    "aten._unique2.default", "aten.unique_consecutive.default", "aten.unique_dim.default",
    "aten.lift_fresh.default", "aten.lift_fresh_copy.default", "boolean-mask indexing",
})
MASKABLE = frozenset({"aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default"})


class GraphCaptureError(RuntimeError):
    """A step that cannot be captured here (no CUDA device, or an op a capture refuses), saying why."""


class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in MASKABLE and any(i is not None and i.dtype == torch.bool for i in args[1]):
            name = "boolean-mask indexing"  # a nonzero inside, so a host read on CUDA
        self.ops.append(name)
        return func(*args, **(kwargs or {}))


def capture_hazards(step: Callable[[], object]) -> list[str]:
    """The ops of one eager call of `step` that a CUDA graph capture would refuse (HAZARDS), in order."""
    with _OpLog() as log:
        step()
    return [op for op in log.ops if op in HAZARDS]


def cuda_graph(step: Callable[[], object]) -> Callable[[], None]:
    """Warm `step` up on a side stream, capture one call as a CUDA graph, return its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def eager_replay(step: Callable[[], object]) -> Callable[[], None]:
    """The CPU twin of `cuda_graph`: the same warm-up, a first call checked for `capture_hazards`, and a
    "replay" that runs the step eagerly on the same buffers."""
    for _ in range(WARMUP - 1):
        step()
    hazards = capture_hazards(step)
    if hazards:
        raise GraphCaptureError(f"the step issues ops a CUDA graph capture refuses: {sorted(set(hazards))}")
    return step


@dataclass
class CapturedStep:
    """A decoder and its recorded step, called as `StaticDecoder.run`'s step: token [B, 1] in, the next out."""

    decoder: StaticDecoder
    replay: Callable[[], None]
    token: torch.Tensor  # [B, 1]: the step's input buffer; each replay leaves the next token in it

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        if token is not self.token:  # the first token; later ones are already in place
            self.token.copy_(token)
        self.replay()
        return self.token


def capture(
    decoder: StaticDecoder, shared: Prefilled, max_new_tokens: int, record: Record | None = None
) -> CapturedStep:
    """Record `decoder.step` (by `record`; default a CUDA graph, which needs the decoder on CUDA) and put the
    prompt `shared` back in its buffers."""
    if record is None:
        if decoder.position.device.type != "cuda":
            raise GraphCaptureError(
                f"CUDA graphs need a CUDA device and this decoder is on {decoder.position.device.type}: on CPU "
                "compile the step (core.static_step.compiled), or pass record=eager_replay to test the capture path."
            )
        record = cuda_graph
    token = decoder.first_token.clone()

    def step() -> None:
        token.copy_(decoder.step(token))

    with torch.no_grad(), decoder.attached():
        replay = record(step)
    decoder.load(shared, max_new_tokens)
    return CapturedStep(decoder, replay, token)


@dataclass
class StepGraphs:
    """Captured steps of one model, method and budget, one per bucket (batch, capacity)."""

    lm: LoadedModel
    policy: Policy
    budget: Budget
    record: Record | None = None  # None: CUDA graphs; eager_replay: the CPU twin
    fused: bool = True
    dense_backend: str | None = None
    steps: dict[tuple[int, int], CapturedStep] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policy.reset()

    def prepare(self, shared: Prefilled, max_new_tokens: int) -> CapturedStep:
        """The bucket's captured step with `shared` loaded: captured on the bucket's first prompt, reloaded
        in place after."""
        batch, prompt_len = shared.ids.shape
        key = (batch, capacity_for(prompt_len, max_new_tokens, self.lm.spec.max_context))
        held = self.steps.get(key)
        if held is not None:
            held.decoder.load(shared, max_new_tokens)
            return held
        decoder = StaticDecoder(
            self.lm, shared, self.policy, self.budget, max_new_tokens, self.fused, self.dense_backend
        )
        self.steps[key] = captured = capture(decoder, shared, max_new_tokens, self.record)
        return captured

    def generate(self, prompt: torch.Tensor | Prefilled, max_new_tokens: int) -> StaticResult:
        """Greedy decoding of `max_new_tokens` tokens after `prompt` (ids [1, P] or a shared prefill) by replays."""
        shared = (
            prompt
            if isinstance(prompt, Prefilled)
            else prefill_prompt(self.lm, prompt, GenerationConfig(max_new_tokens=max_new_tokens))
        )
        captured = self.prepare(shared, max_new_tokens)
        return captured.decoder.run(max_new_tokens, captured)
